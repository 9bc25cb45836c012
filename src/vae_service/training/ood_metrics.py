"""Detection figures for an anomaly score, out-of-distribution images as the positive class:
AUROC, AUPR (average precision) and the false-positive rate at 95% true positives, as in
Hendrycks & Gimpel 2017 and the papers docs/anomaly.md cites. scikit-learn computes them."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from torch import Tensor

from vae_service.model.anomaly import anomalous

TPR = 0.95


def detection(in_scores: Tensor, out_scores: Tensor) -> dict[str, float]:
    """{"auroc", "aupr", "fpr_at_95_tpr"} of separating ``out_scores`` (higher is more
    anomalous) from ``in_scores``."""
    labels = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    scores = np.r_[in_scores.double().numpy(), out_scores.double().numpy()]
    fpr, tpr, _ = roc_curve(labels, scores)
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "aupr": float(average_precision_score(labels, scores)),
        "fpr_at_95_tpr": float(fpr[np.searchsorted(tpr, TPR, side="left")]),
    }


def flag_rate(p_values: Tensor, fpr: float) -> float:
    """Share of images flagged at nominal ``fpr``: of in-distribution images, about fpr."""
    return float(anomalous(p_values, fpr).double().mean())
