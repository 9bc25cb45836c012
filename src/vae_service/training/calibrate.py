"""``vae-calibrate WEIGHTS``: fit the anomaly score (model/calibration.py) on training images,
score held-out in-distribution images for its p-values, and store both in the weights file.

Fitted on the first ``--fit-limit`` training images of the data set the weights' metadata
names (or ``--data``); calibrated on the first half of its test split (the second half is
what ``vae-eval --ood`` measures the flag rate on), or on every image of ``--images FOLDER``.
Exit status: 0 on success, 2 on bad arguments, an unusable weights file or bad data.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vae_service.model.anomaly import DEFAULT_IWAE_SAMPLES, batched_statistics, check_k
from vae_service.model.calibration import (
    Calibration,
    fingerprint,
    fit_calibration,
    without_calibration,
)
from vae_service.model.device import resolve_device
from vae_service.model.prior import FittedPrior
from vae_service.model.weights import Checkpoint, load_weights, save_weights
from vae_service.training.cli import one_line_errors
from vae_service.training.data import DataError, Split, load_dataset, read_image_folder

DEFAULT_FIT_LIMIT = 20_000
DEFAULT_COMPONENTS = 4


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vae-calibrate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("weights", type=Path, help="weights file (.safetensors) to calibrate")
    p.add_argument("--data", help="training data set (default: the one the metadata names)")
    p.add_argument("--data-dir", help="directory of the IDX files (default: the Debian package's)")
    p.add_argument("--images", type=Path, metavar="FOLDER", help="calibrate on these images")
    p.add_argument("--fit-limit", type=int, default=DEFAULT_FIT_LIMIT, help="training images")
    p.add_argument("--calibration-limit", type=int, help="use at most N calibration images")
    p.add_argument("--components", type=int, default=DEFAULT_COMPONENTS, help="mixture size")
    p.add_argument("--k", type=int, default=DEFAULT_IWAE_SAMPLES, help="IWAE samples per image")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws and the EM")
    p.add_argument("--batch-size", type=int, default=500, help="images per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out", type=Path, help="write here instead of replacing WEIGHTS in place")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    for name in ("fit_limit", "calibration_limit", "components", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    try:
        check_k(args.k)
    except ValueError as exc:
        parser.error(f"--k: {exc}")
    if args.images is not None and not args.images.is_dir():
        parser.error(f"--images {args.images}: not a folder")


def calibration_halves(test: Tensor) -> tuple[Tensor, Tensor]:
    """The test split's first half calibrates; its second half evaluates: never the same
    images for both."""
    half = len(test) // 2
    return test[:half], test[half:]


def data_name(ckpt: Checkpoint, given: str | None) -> str:
    name = given or (ckpt.metadata.get("data") or {}).get("name")
    if not isinstance(name, str) or not name:
        raise DataError(f"{ckpt.path}: its metadata names no data set: give --data")
    return name


def image_sets(args: argparse.Namespace, ckpt: Checkpoint) -> dict[str, tuple[str, Tensor]]:
    """{"fit": (source, images), "calibration": (source, images)}."""
    cfg, name = ckpt.config, data_name(ckpt, args.data)
    data = load_dataset(name, args.data_dir, cfg.image_size, cfg.channels)
    fit = data.train.subset(args.fit_limit)
    if args.images is None:
        cal = Split(calibration_halves(data.test.images)[0])
        cal_source = f"{data.name} test split, first half"
    else:
        cal = Split(read_image_folder(args.images, cfg.image_size, cfg.channels))
        cal_source = f"folder {args.images}"
    cal = cal.subset(args.calibration_limit)
    if len(fit) < 2 * args.components or len(cal) < 1:
        raise DataError(f"need {2 * args.components} training images and 1 calibration image")
    return {
        "fit": (f"{data.name} train split", fit.images),
        "calibration": (cal_source, cal.images),
    }


def calibrate(args: argparse.Namespace, ckpt: Checkpoint, device: torch.device) -> Calibration:
    prior = FittedPrior.from_checkpoint(ckpt)
    sets = image_sets(args, ckpt)
    stats = {
        role: batched_statistics(
            ckpt.model, images, args.k, args.batch_size, args.seed, prior, device
        )
        for role, (_, images) in sets.items()
    }
    info: dict[str, Any] = {
        "k": args.k,
        "seed": args.seed,
        "fingerprint": fingerprint(ckpt.model, ckpt.extra_tensors),
        **{role: {"source": src, "n": len(images)} for role, (src, images) in sets.items()},
    }
    return fit_calibration(stats["fit"], stats["calibration"], args.components, info, args.seed)


def attach_calibration(ckpt: Checkpoint, calibration: Calibration, out: str | Path) -> Checkpoint:
    """Write ``ckpt`` with ``calibration`` (replacing any it had) to ``out``, atomically, its
    tensors stored as they were; return the re-read file."""
    meta, extra, _ = without_calibration(ckpt.metadata, ckpt.extra_tensors)
    meta = {k: v for k, v in meta.items() if k not in ("config", "format_version")}
    meta["anomaly"] = calibration.describe()
    save_weights(out, ckpt.model, meta, extra | calibration.tensors())
    return load_weights(out)


def summary_line(c: Calibration, out: Path, seconds: float) -> str:
    d = c.describe()
    fpr, n = d["default_fpr"], d["calibration"]["n"]
    threshold = (
        f"threshold {d['threshold']:.3f} at {fpr:.0%} false positives"
        if d["threshold"] is not None
        else f"no threshold at {fpr:.0%}: {n} calibration images are too few"
    )
    return (
        f"fitted a {d['components']}-component DoSE density to {d['fit']['n']} images "
        f"({d['fit']['source']}), calibrated on {n} ({d['calibration']['source']}): "
        f"{threshold}; wrote {out} in {seconds:.1f}s"
    )


@one_line_errors("vae-calibrate")
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(args, parser)
    began = time.perf_counter()
    device = resolve_device(args.device)
    ckpt = load_weights(args.weights, device)
    calibration = calibrate(args, ckpt, device)
    out = args.out or args.weights
    attach_calibration(ckpt, calibration, out)
    seconds = time.perf_counter() - began
    if args.json:
        print(json.dumps(calibration.describe() | {"out": str(out), "seconds": seconds}))
    else:
        print(summary_line(calibration, out, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
