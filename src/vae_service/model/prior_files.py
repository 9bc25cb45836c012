"""Writing a fitted or learned prior into a weights file, with the model it belongs to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vae_service.model.calibration import without_calibration
from vae_service.model.prior import PRIOR_PREFIX, FittedPrior
from vae_service.model.vae import VAE
from vae_service.model.weights import Checkpoint, load_weights, save_weights


def attach_prior(
    path: str | Path,
    prior: FittedPrior,
    out: str | Path | None = None,
    storage: str | None = None,
) -> Checkpoint:
    """Add ``prior`` to the weights file at ``path`` (replacing any prior it had) and write
    the result atomically to ``out`` (default: in place), its model tensors in ``storage``
    (default: as they were); return the re-read file."""
    ckpt = load_weights(path)
    return rewrite_with_prior(ckpt, ckpt.model, prior, out or path, storage)


def rewrite_with_prior(
    ckpt: Checkpoint,
    model: VAE,
    prior: FittedPrior,
    out: str | Path,
    storage: str | None = None,
    more_metadata: dict[str, Any] | None = None,
) -> Checkpoint:
    """Write ``model`` with ``prior`` and ``ckpt``'s other tensors and metadata to ``out``,
    less any anomaly calibration: it was made for the old prior (rerun vae-calibrate)."""
    if prior.latent_dim != ckpt.config.latent_dim:
        raise ValueError(
            f"prior has {prior.latent_dim} latent dims, model {ckpt.config.latent_dim}"
        )
    meta, extra, _ = without_calibration(ckpt.metadata, ckpt.extra_tensors)
    extra = {k: v for k, v in extra.items() if not k.startswith(PRIOR_PREFIX)}
    meta = {k: v for k, v in meta.items() if k not in ("config", "format_version")}
    meta |= {"prior": prior.describe(), **(more_metadata or {})}
    if storage:
        meta["storage"] = storage
    save_weights(out, model, meta, extra | prior.tensors())
    return load_weights(out)
