"""Offline training CLI: ``vae-train`` or ``python -m vae_service.training.train``.

Multi-GPU / multi-node: launch with
``torchrun --nproc_per_node N -m vae_service.training.train ...``;
DDP averages gradients, so every rank ends with the same weights.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from vae_service.model.config import LIKELIHOODS, VAEConfig
from vae_service.model.device import resolve_device
from vae_service.model.loss import elbo_terms, kl_weight
from vae_service.model.prior import COVARIANCE_TYPES, FittedPrior
from vae_service.model.vae import VAE
from vae_service.model.weights import STORAGE_DTYPES, save_weights
from vae_service.training import distributed as D
from vae_service.training.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from vae_service.training.cli import one_line_errors
from vae_service.training.data import Dataset, load_dataset
from vae_service.training.fit_prior import prior_after_training
from vae_service.training.metrics import evaluate_elbo


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vae-train",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--data", default="fashion-mnist", help="fashion-mnist, mnist, shapes or an image folder"
    )
    p.add_argument("--data-dir", help="directory of the IDX files (default: the Debian package's)")
    p.add_argument("--limit-train", type=int, help="use only the first N training images")
    p.add_argument("--limit-test", type=int, help="use only the first N test images")
    p.add_argument("--image-size", type=int, help="default: 64 for shapes, else 28")
    p.add_argument("--channels", type=int, choices=(1, 3), help="default: 3 for shapes, else 1")
    p.add_argument("--latent-dim", type=int, default=32)
    p.add_argument("--widths", default="32,64", help="encoder channel widths, one per halving")
    p.add_argument("--hidden-dim", type=int, default=256)
    p.add_argument("--likelihood", default="bernoulli", choices=LIKELIHOODS)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128, help="global batch, split across ranks")
    p.add_argument("--lr", type=float, default=2e-3, help="peak Adam learning rate (cosine decay)")
    p.add_argument("--beta", type=float, default=1.0, help="weight of the KL term")
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="linear KL warm-up length")
    p.add_argument(
        "--free-bits", type=float, default=0.0, help="KL floor per latent unit, nats (0: off)"
    )
    p.add_argument("--head-width", type=int, default=0, help="full-resolution decoder conv")
    p.add_argument("--clip-grad", type=float, help="clip the gradient's norm to this (off: none)")
    p.add_argument(
        "--channels-last", action="store_true", help="NHWC convolutions: faster on CPU and GPU"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out", type=Path, default=Path("runs/vae.safetensors"))
    p.add_argument("--resume", action="store_true", help="continue from OUT's .ckpt.safetensors")
    p.add_argument("--prior-components", type=int, default=10, help="fitted prior; 0: none")
    p.add_argument("--prior-covariance", default="full", choices=COVARIANCE_TYPES)
    p.add_argument(
        "--storage", default="float32", choices=tuple(STORAGE_DTYPES), help="weights dtype"
    )
    p.add_argument("--no-progress", action="store_true", help="no per-batch progress bar")
    return p


def positive_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    shapes = args.data == "shapes"
    args.image_size = args.image_size or (64 if shapes else 28)
    args.channels = args.channels or (3 if shapes else 1)
    for name in ("epochs", "batch_size", "latent_dim", "hidden_dim", "image_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.clip_grad is not None and args.clip_grad <= 0:
        parser.error("--clip-grad must be positive")
    if args.lr <= 0 or min(args.beta, args.warmup_epochs, args.prior_components) < 0:
        parser.error("--lr must be positive; --beta, --warmup-epochs, --prior-components >= 0")
    if args.free_bits < 0 or args.head_width < 0:
        parser.error("--free-bits and --head-width must be >= 0")
    try:
        args.widths = tuple(int(w) for w in args.widths.split(","))
    except ValueError:
        parser.error(f"--widths must be comma-separated integers, got {args.widths!r}")


@dataclass
class Trainer:
    """One training run: the model, its DDP wrapper, optimizer and schedule."""

    args: argparse.Namespace
    model: VAE
    device: torch.device
    ctx: D.DistContext
    steps_per_epoch: int

    def __post_init__(self) -> None:
        if self.args.channels_last:  # oneDNN's and cuDNN's fast convolutions are NHWC
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.args.lr)
        self.net: torch.nn.Module = self.model
        if self.ctx.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        self.amp_dtype = _amp_dtype(self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    def lr_at(self, step: int) -> float:
        # Cosine decay to zero over the whole run (Loshchilov & Hutter 2017).
        total = self.args.epochs * self.steps_per_epoch
        return float(0.5 * self.args.lr * (1 + math.cos(math.pi * min(step, total) / total)))

    def step(self, x: Tensor, step: int, gen: torch.Generator) -> Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        warmup = int(self.args.warmup_epochs * self.steps_per_epoch)
        if self.args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, self.amp_dtype, enabled=self.amp_dtype is not None):
            logits, mean, logvar = self.net(x, gen)
        terms = elbo_terms(
            logits.float(),
            x,
            mean.float(),
            logvar.float(),
            self.model.cfg,
            kl_weight(step, self.args.beta, warmup),
            self.args.free_bits,
        )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms.loss).backward()
        if self.args.clip_grad:  # a rare huge step can blow the posterior variances up
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return torch.stack([terms.neg_elbo, terms.recon, terms.kl]).detach()


def _amp_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed precision on CUDA only: bf16 where supported (no loss scaling), else fp16."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def epoch_batches(n: int, batch: int, seed: int, epoch: int, ctx: D.DistContext) -> list[Tensor]:
    """This rank's index batches: one permutation per (seed, epoch) shared by all ranks,
    dealt round-robin, so runs and resumes are reproducible."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    per_rank = max(1, batch // ctx.world_size)
    usable = (n // (per_rank * ctx.world_size)) * per_rank * ctx.world_size
    mine = perm[:usable][ctx.rank :: ctx.world_size]
    return list(mine.split(per_rank))


def train_epoch(
    trainer: Trainer, images: Tensor, epoch: int, step: int
) -> tuple[dict[str, float], int]:
    args, ctx = trainer.args, trainer.ctx
    noise = torch.Generator(trainer.device).manual_seed(args.seed * 7919 + epoch * 101 + ctx.rank)
    batches = epoch_batches(len(images), args.batch_size, args.seed, epoch, ctx)
    bar = tqdm(
        batches,
        desc=f"epoch {epoch + 1}/{args.epochs}",
        leave=False,
        disable=args.no_progress or not ctx.is_main,
        file=sys.stderr,
    )
    trainer.model.train()
    totals = torch.zeros(3, device=trainer.device)
    for idx in bar:
        parts = trainer.step(images[idx].to(trainer.device, non_blocking=True), step, noise)
        totals += parts
        step += 1
        bar.set_postfix(loss=f"{parts[0].item():.1f}")
    means = D.all_reduce_mean(totals / max(1, len(batches)), ctx).tolist()
    return dict(zip(("neg_elbo", "recon", "kl"), means, strict=True)), step


def summary_line(row: dict[str, Any]) -> str:
    tr, te = row["train"], row["test"]
    return (
        f"epoch {row['epoch']:3d} | train -ELBO {tr['neg_elbo']:.2f} (recon {tr['recon']:.2f}, "
        f"KL {tr['kl']:.2f}) | test -ELBO {te['neg_elbo']:.2f} (recon {te['recon']:.2f}, "
        f"KL {te['kl']:.2f}) | {row['seconds']:.1f}s"
    )


def fit(trainer: Trainer, data: Dataset, out: Path) -> list[dict[str, Any]]:
    """Train for the remaining epochs, checkpointing after each; return the history."""
    history: list[dict[str, Any]] = []
    start_epoch, step = 0, 0
    ckpt = checkpoint_path(out)
    if trainer.args.resume and ckpt.exists():
        progress = load_checkpoint(ckpt, trainer.model, trainer.optimizer)
        start_epoch, step, history = progress["epoch"], progress["step"], progress["history"]
    train_images = data.train.images
    for epoch in range(start_epoch, trainer.args.epochs):
        began = time.perf_counter()
        train_metrics, step = train_epoch(trainer, train_images, epoch, step)
        test_metrics = evaluate_elbo(trainer.model, data.test.images, device=trainer.device)
        row = {
            "epoch": epoch + 1,
            "train": train_metrics,
            "test": test_metrics,
            "seconds": time.perf_counter() - began,
        }
        history.append(row)
        if trainer.ctx.is_main:
            print(summary_line(row), flush=True)
            save_checkpoint(
                ckpt,
                trainer.model,
                trainer.optimizer,
                {"epoch": epoch + 1, "step": step, "history": history},
            )
    return history


def training_metadata(
    args: argparse.Namespace,
    data: Dataset,
    history: list[dict[str, Any]],
    ctx: D.DistContext,
    identical: bool,
) -> dict[str, Any]:
    hyper = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k not in ("resume", "no_progress", "out", "storage")
    }
    summary = {
        "epochs": len(history),
        "final_test": history[-1]["test"] if history else None,
        "final_train": history[-1]["train"] if history else None,
        "seconds": sum(r["seconds"] for r in history),
        "world_size": ctx.world_size,
        "replicas_identical": identical,
        "torch": torch.__version__,
        "args": hyper,
    }
    return {"data": data.describe(), "training": summary, "storage": args.storage}


def model_config(args: argparse.Namespace) -> VAEConfig:
    """The VAE's shape, from the command line."""
    return VAEConfig(
        image_size=args.image_size,
        channels=args.channels,
        latent_dim=args.latent_dim,
        widths=args.widths,
        hidden_dim=args.hidden_dim,
        head_width=args.head_width,
        likelihood=args.likelihood,
    )


def run(args: argparse.Namespace) -> Path:
    torch.manual_seed(args.seed)
    device = resolve_device(args.device, int(os.environ.get("LOCAL_RANK", "0")))
    ctx = D.init_distributed(device)
    try:
        data = load_dataset(args.data, args.data_dir, args.image_size, args.channels)
        data = Dataset(
            data.name, data.train.subset(args.limit_train), data.test.subset(args.limit_test)
        )
        model = VAE(model_config(args)).to(device)
        if args.prior_components > len(data.train):  # refused now, not after training
            raise ValueError(f"--prior-components exceeds the {len(data.train)} training images")
        steps = len(epoch_batches(len(data.train), args.batch_size, args.seed, 0, ctx))
        trainer = Trainer(args, model, device, ctx, steps)
        history = fit(trainer, data, args.out)
        identical = D.replicas_identical(model, ctx)
        if ctx.is_main:
            meta = training_metadata(args, data, history, ctx, identical)
            spec = args.prior_components, args.prior_covariance, args.seed
            prior = prior_after_training(model, data.train.images, *spec, device)
            finish(args.out, model, meta, history, data.test.images, device, prior)
        if not identical:
            raise RuntimeError("DDP replicas diverged: weights differ between ranks")
        return Path(args.out)
    finally:
        D.shutdown(ctx)


def finish(
    out: Path,
    model: VAE,
    metadata: dict[str, Any],
    history: list[dict[str, Any]],
    test_images: Tensor,
    device: torch.device,
    prior: FittedPrior | None = None,
) -> None:
    """Write the final weights (and prior), then the report beside them (OUT_STEM.report/)."""
    from vae_service.training.report import write_report

    model.eval()
    fitted = {"prior": prior.describe()} if prior else {}
    save_weights(out, model, metadata | fitted, prior.tensors() if prior else None)
    report_dir = out.with_name(out.stem + ".report")
    write_report(report_dir, model, history, test_images, device)
    print(f"wrote {out} and {report_dir}/", flush=True)


@one_line_errors("vae-train")
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    positive_args(args, parser)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
