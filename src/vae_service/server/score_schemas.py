"""The /score answer: per image its score, p-value, flag and the parts they come from."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ImageScore(BaseModel):
    score: float = Field(description="Higher is more anomalous", examples=[1.7])
    p_value: float | None = Field(
        description="Share of the held-out in-distribution calibration images that score at "
        "least as high (conformal, (1 + count) / (n + 1)); null for an uncalibrated model",
        examples=[0.42],
    )
    anomalous: bool | None = Field(
        description="p_value <= fpr: flagged at the requested false-positive rate; null for "
        "an uncalibrated model",
        examples=[False],
    )
    parts: dict[str, float] = Field(
        description="The statistics the score is made of: -ELBO in nats and in bits per "
        "dimension, the IWAE bound on -log p(x) with k samples, reconstruction and KL in nats",
        examples=[{"neg_elbo_nats": 236.2, "bits_per_dim": 0.43, "iwae_nats": 231.9}],
    )


class ScoreResponse(BaseModel):
    """One entry per image, in request order."""

    calibrated: bool = Field(description="Whether the weights carry calibration (vae-calibrate)")
    score_kind: str = Field(description="Which score this is (docs/anomaly.md)")
    fpr: float = Field(description="The false-positive rate the flags are set at")
    threshold: float | None = Field(
        description="The score above which an image is flagged at fpr; null if uncalibrated, "
        "or if the calibration holds too few images to flag anything at that rate"
    )
    k: int = Field(description="Importance samples of the IWAE bound")
    note: str | None = Field(None, description="Why p_value and anomalous are null, when they are")
    calibration: dict[str, Any] | None = Field(
        None, description="How the model was calibrated (vae-calibrate); null if it was not"
    )
    scores: list[ImageScore]
