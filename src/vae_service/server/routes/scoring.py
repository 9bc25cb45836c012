"""POST /score, and /models/{model}/score: how unlike its training data each image is
to a model (docs/anomaly.md). The images come in as for /encode; the scores are
computed on the model's batcher, so concurrent requests share forward passes. The route
is one of the model routes (routes/inference.py's model_router)."""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import Query, Request, Response

from vae_service.model.anomaly import (
    AnomalyScores,
    Calibration,
    anomalous,
    score_kind,
)
from vae_service.server.query_models import ScoreQuery
from vae_service.server.score_schemas import ImageScore, ScoreResponse
from vae_service.server.serving import ServedModel
from vae_service.server.validation import check_limit

UNCALIBRATED = (
    "this model is not calibrated: p_value and anomalous need calibration statistics in "
    "its weights (vae-calibrate WEIGHTS, docs/anomaly.md)"
)


async def score(
    model: ServedModel,
    query: Annotated[ScoreQuery, Query()],
    request: Request,
    response: Response,
) -> ScoreResponse:
    """Each image's anomaly score (higher: less like the training data), its p-value
    against held-out in-distribution images, the flag at ?fpr=, and the statistics it
    is made of. An uncalibrated model answers the score and its parts only."""
    runtime = model.runtime  # 422 for a diffusers model: it has no likelihood to score
    if query.k is not None:
        check_limit(query.k, model.settings.max_score_samples, "k", "max_score_samples")
    k = query.k or runtime.default_score_k
    images = await model.api.images(request, model.settings)
    scores = await model.wait(runtime.score(images, k))
    response.headers.update(model.headers)
    return score_response(scores, runtime.calibration, k, query.fpr)


def score_response(
    scores: AnomalyScores, calibration: Calibration | None, k: int, fpr: float
) -> ScoreResponse:
    p_values = scores.p_value.tolist() if scores.p_value is not None else None
    flags = anomalous(scores.p_value, fpr).tolist() if scores.p_value is not None else None
    parts = {name: values.tolist() for name, values in scores.parts.items()}
    rows = [
        ImageScore(
            score=value,
            p_value=p_values[i] if p_values else None,
            anomalous=flags[i] if flags else None,
            parts={name: column[i] for name, column in parts.items()},
        )
        for i, value in enumerate(scores.score.tolist())
    ]
    return ScoreResponse(
        calibrated=calibration is not None,
        score_kind=score_kind(calibration),
        fpr=fpr,
        threshold=finite_or_none(calibration.threshold(fpr)) if calibration else None,
        k=k,
        note=None if calibration else UNCALIBRATED,
        calibration=calibration.describe() if calibration else None,
        scores=rows,
    )


def finite_or_none(value: float) -> float | None:
    """JSON has no infinities: no threshold (too few calibration images for the rate)."""
    return value if math.isfinite(value) else None
