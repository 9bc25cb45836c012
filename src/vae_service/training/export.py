"""``vae-export``: a weights file's encoder and decoder as ONNX models, checked against torch.

    vae-export WEIGHTS --onnx DIR [--triton DIR] [--name NAME]

The work is in vae_service/model/onnx_export.py; ``--triton DIR`` also writes a Triton
model repository.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vae_service.model.onnx_export import (
    CHECK_BATCHES,
    TOLERANCE,
    export_onnx,
    require,
    write_triton_repository,
)
from vae_service.model.weights import load_weights
from vae_service.training.cli import one_line_errors

PROG = "vae-export"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Export a weights file's encoder and decoder as ONNX models (dynamic batch), "
            f"checked against torch within {TOLERANCE} (largest absolute difference)."
        ),
    )
    parser.add_argument("weights", type=Path, help="a .safetensors weights file")
    parser.add_argument(
        "--onnx",
        type=Path,
        required=True,
        metavar="DIR",
        help="write DIR/<sha256>/{encoder,decoder}.onnx, export.json (VAE_ONNX_CACHE_DIR layout)",
    )
    parser.add_argument(
        "--triton", type=Path, metavar="DIR", help="also write a Triton model repository here"
    )
    parser.add_argument(
        "--name", help="model name in the Triton repository; default: the weights' file stem"
    )
    parser.add_argument(
        "--max-batch-size", type=int, default=64, help="Triton's max_batch_size (default 64)"
    )
    return parser


@one_line_errors(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_batch_size < 1:
        raise ValueError("--max-batch-size must be at least 1")
    require("onnxruntime")
    checkpoint = load_weights(args.weights, "cpu")
    export = export_onnx(checkpoint, args.onnx)
    diff = export.manifest["max_abs_diff"]
    print(f"{export.encoder}\n{export.decoder}")
    print(
        "checked against torch, batches "
        + ", ".join(map(str, CHECK_BATCHES))
        + ": max |diff| "
        + ", ".join(f"{k} {v:.2e}" for k, v in diff.items())
        + f" (tolerance {TOLERANCE})"
    )
    if args.triton is not None:
        name = args.name or args.weights.stem.lower()
        for folder in write_triton_repository(
            export, checkpoint, args.triton, name, args.max_batch_size
        ):
            print(folder / "config.pbtxt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
