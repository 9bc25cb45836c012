"""Weights that ship with the package, so the service runs without training first."""

from pathlib import Path

PRETRAINED_DIR = Path(__file__).resolve().parent
# Trained on the full Fashion-MNIST training set; docs/training.md says how to reproduce.
DEFAULT_WEIGHTS = PRETRAINED_DIR / "fashion-mnist.safetensors"
