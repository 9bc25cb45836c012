"""Weights that ship with the package, so the service runs without training first."""

from pathlib import Path

PRETRAINED_DIR = Path(__file__).resolve().parent
# The bundled VAEs, a model repository of their own: VAE_MODEL_DIR=BUNDLED_MODELS serves them
# all side by side (docs/training.md says how each was made).
BUNDLED_MODELS = PRETRAINED_DIR / "models"
DEFAULT_WEIGHTS = BUNDLED_MODELS / "fashion-mnist.safetensors"
