"""Pure-PyTorch variational autoencoder: model, loss, weights, data, training, evaluation.

This package never imports the web service.
"""

from model.config import VAEConfig
from model.vae import VAE
from model.weights import Checkpoint, WeightsError, load_weights, save_weights

__all__ = ["VAE", "Checkpoint", "VAEConfig", "WeightsError", "load_weights", "save_weights"]
