"""Sharpen a trained VAE's decoder: ``vae-finetune WEIGHTS --out SHARP.safetensors``.

The encoder is frozen, so the latents, and the fitted prior over them, stay exactly those
of WEIGHTS: a client can encode with either model and decode with the sharp one. The
decoder is trained on the reconstruction term of the ELBO plus a patch discriminator's
hinge loss, adaptively weighted (training/adversarial.py). The discriminator is not saved.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vae_service.model.calibration import without_calibration
from vae_service.model.device import resolve_device
from vae_service.model.loss import reconstruction_nll
from vae_service.model.weights import STORAGE_DTYPES, Checkpoint, load_weights, save_weights
from vae_service.training import adversarial as A
from vae_service.training.cli import note_dropped_calibration, one_line_errors
from vae_service.training.data import load_dataset
from vae_service.training.distributed import DistContext
from vae_service.training.metrics import reconstruction_error
from vae_service.training.quality import sharpness_ratios
from vae_service.training.train import epoch_batches


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vae-finetune",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("weights", type=Path, help="the trained VAE (.safetensors)")
    p.add_argument("--out", type=Path, required=True, help="where the sharp weights go")
    p.add_argument("--data", default="fashion-mnist", help="the data set WEIGHTS learnt")
    p.add_argument("--data-dir", help="directory of the IDX files (default: the Debian package's)")
    p.add_argument("--limit-train", type=int, help="use only the first N training images")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4, help="Adam rate of decoder and critic")
    p.add_argument("--adv-weight", type=float, default=0.5, help="times the adaptive weight")
    p.add_argument(
        "--feature-matching",
        type=float,
        default=0.0,
        help="weight of the critic-feature L1 term, added to the adversarial term (0: off)",
    )
    p.add_argument(
        "--latents",
        default="sample",
        choices=("sample", "mean"),
        help="decode a posterior draw or the posterior mean of each training image",
    )
    p.add_argument("--critic-warmup", type=int, default=300, help="critic-only steps first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--storage", default="float32", choices=tuple(STORAGE_DTYPES))
    return p


@dataclass
class Finetuner:
    """The frozen encoder, the decoder being sharpened, and the critic."""

    ckpt: Checkpoint
    args: argparse.Namespace
    device: torch.device

    def __post_init__(self) -> None:
        torch.manual_seed(self.args.seed)
        model = self.ckpt.model.to(self.device)
        model.encoder.requires_grad_(False).eval()
        self.decoder = model.decoder.train()
        layers = A.layers_for(model.cfg.image_size)
        self.critic = A.PatchDiscriminator(model.cfg.channels, layers=layers).to(self.device)
        betas = (0.5, 0.9)  # Rombach et al.'s autoencoder settings
        self.opt_dec = torch.optim.Adam(self.decoder.parameters(), self.args.lr, betas=betas)
        self.opt_critic = torch.optim.Adam(self.critic.parameters(), self.args.lr, betas=betas)

    def decode(self, x: Tensor, gen: torch.Generator) -> Tensor:
        # "sample": a posterior draw, as in training. "mean": the posterior mean, which is
        # what reconstructions decode and what the fitted prior was fitted to.
        model = self.ckpt.model
        with torch.no_grad():
            mean, logvar = model.encode(x)
            z = mean if self.args.latents == "mean" else model.reparameterize(mean, logvar, gen)
        return model.decode_logits(z)

    def decoder_step(self, x: Tensor, logits: Tensor, adversarial: bool) -> dict[str, float]:
        rec = reconstruction_nll(logits, x, self.ckpt.config).mean()
        loss, out = rec, {"rec": float(rec.detach())}
        if adversarial:
            self.critic.requires_grad_(False)
            fake = self.critic.features(torch.sigmoid(logits))
            gen_loss = A.generator_hinge_loss(fake[-1])
            if self.args.feature_matching:
                real = self.critic.features(x)
                gen_loss = gen_loss + self.args.feature_matching * A.feature_matching_loss(
                    real, fake
                )
            last = self.decoder.last_layer
            weight = A.adaptive_weight(rec, gen_loss, last) * self.args.adv_weight
            loss = rec + weight * gen_loss
            self.critic.requires_grad_(True)
            out |= {"gen": float(gen_loss.detach()), "weight": float(weight)}
        self.opt_dec.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_dec.step()
        return out

    def critic_step(self, x: Tensor, fake: Tensor) -> float:
        loss = A.discriminator_hinge_loss(self.critic(x), self.critic(fake.detach()))
        self.opt_critic.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_critic.step()
        return float(loss.detach())


def finetune_epoch(tuner: Finetuner, images: Tensor, epoch: int, step: int) -> tuple[dict, int]:
    args = tuner.args
    gen = torch.Generator(tuner.device).manual_seed(args.seed * 7919 + epoch)
    sums: dict[str, float] = {}
    batches = epoch_batches(len(images), args.batch_size, args.seed, epoch, DistContext())
    for idx in batches:
        x = images[idx].to(tuner.device)
        logits = tuner.decode(x, gen)
        parts = tuner.decoder_step(x, logits, step >= args.critic_warmup)
        parts["critic"] = tuner.critic_step(x, torch.sigmoid(logits))
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + value
        step += 1
    return {k: v / len(batches) for k, v in sums.items()}, step


def progress(tuner: Finetuner, test: Tensor) -> dict[str, float]:
    """PSNR and sharpness ratios on a slice of the test split, to watch the trade-off."""
    model = tuner.ckpt.model.eval()
    recon = reconstruction_error(model, test, device=tuner.device)
    sharp = sharpness_ratios(tuner.ckpt, test, recon["recon_sharpness"], 1000, 0, tuner.device)
    tuner.decoder.train()
    return {
        "psnr": recon["psnr"],
        **{f"sharp_{k}": float(sharp[k]) for k in ("reconstructions", "samples")},
    }


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = resolve_device(args.device)
    ckpt = load_weights(args.weights, device)
    cfg = ckpt.config
    data = load_dataset(args.data, args.data_dir, cfg.image_size, cfg.channels)
    train, test = data.train.subset(args.limit_train).images, data.test.subset(2000).images
    tuner, history, step = Finetuner(ckpt, args, device), [], 0
    note_dropped_calibration("vae-finetune", ckpt)
    for epoch in range(args.epochs):
        began = time.perf_counter()
        losses, step = finetune_epoch(tuner, train, epoch, step)
        row = {"epoch": epoch + 1, **losses, **progress(tuner, test)}
        history.append(row | {"seconds": time.perf_counter() - began})
        print(" | ".join(f"{k} {v:.4g}" for k, v in history[-1].items()), flush=True)
        # Saved after every epoch: the learning rate is constant, so the file after K
        # epochs is exactly what --epochs K writes, and a run can be stopped at any epoch.
        save_sharp(args, ckpt, history)
    return history


def save_sharp(args: argparse.Namespace, ckpt: Checkpoint, history: list[dict[str, Any]]) -> None:
    hyper = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    hyper["epochs"] = len(history)
    # The decoder changed: a calibration of the source no longer holds.
    kept, extra, _ = without_calibration(ckpt.metadata, ckpt.extra_tensors)
    meta = {k: v for k, v in kept.items() if k not in ("config", "format_version")}
    meta["finetune"] = {
        "args": hyper,
        "source_sha256": ckpt.sha256,
        "history": history,
        "seconds": sum(r["seconds"] for r in history),
        "torch": torch.__version__,
    }
    meta["storage"] = args.storage
    save_weights(args.out, ckpt.model.eval(), meta, extra)
    ckpt.model.decoder.train()
    print(f"wrote {args.out} (epoch {len(history)})", flush=True)


@one_line_errors("vae-finetune")
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if min(args.epochs, args.batch_size) < 1 or args.lr <= 0:
        parser.error("--epochs and --batch-size must be >= 1, --lr > 0")
    if min(args.adv_weight, args.feature_matching) < 0:
        parser.error("--adv-weight and --feature-matching must be >= 0")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
