"""Pure-PyTorch variational autoencoder: model, loss, weights, data, training, evaluation.

This package never imports the web service.
"""

from vae_service.model.config import VAEConfig
from vae_service.model.vae import VAE
from vae_service.model.weights import Checkpoint, WeightsError, load_weights, save_weights

__all__ = ["VAE", "Checkpoint", "VAEConfig", "WeightsError", "load_weights", "save_weights"]
