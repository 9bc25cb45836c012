"""``vae-eval --ood``: how well the anomaly score (model/anomaly.py) tells each set of
training/ood_sets.py from held-out in-distribution images, against the raw −ELBO, and how
many in-distribution images the calibrated flag raises at a nominal 1%.

In-distribution images are the second half of the test split: ``vae-calibrate`` calibrates
on the first, so no image is both calibrated on and evaluated.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vae_service.model.anomaly import (
    DEFAULT_FPR,
    Calibration,
    batched_statistics,
    score_kind,
    score_of,
)
from vae_service.model.prior import FittedPrior
from vae_service.model.weights import Checkpoint
from vae_service.training.calibrate import calibration_halves
from vae_service.training.ood_metrics import detection, flag_rate
from vae_service.training.ood_sets import TARGETLESS, ood_sets

ELBO, CORRECTED = "neg_elbo_nats", "complexity_corrected_bits_per_dim"
# The targets on the default model: AUROC on every set with one, and the flag rate.
AUROC_TARGET = 0.95
FLAG_RATE_RANGE = (0.005, 0.015)


def evaluate_ood(
    ckpt: Checkpoint, test: Tensor, limit: int | None, k: int, batch_size: int, seed: int,
    device: torch.device,
) -> dict[str, Any]:  # fmt: skip
    """The report: per set, detection figures of the chosen score, of the −ELBO and of the
    complexity-corrected score."""
    calibration = Calibration.from_checkpoint(ckpt)
    prior = FittedPrior.from_checkpoint(ckpt)
    k = calibration.k if calibration else k

    def statistics(images: Tensor) -> dict[str, Tensor]:
        return batched_statistics(ckpt.model, images, k, batch_size, seed, prior, device)

    in_dist = calibration_halves(test)[1][:limit]
    inside = statistics(in_dist)
    report: dict[str, Any] = {
        "score": score_kind(calibration),
        "k": k,
        "n_in_distribution": len(in_dist),
        "flag_rate": _flag_rate(calibration, inside),
        "nominal_fpr": DEFAULT_FPR,
        "sets": {},
    }
    for name, images in ood_sets(in_dist, limit or len(in_dist), seed).items():
        report["sets"][name] = _one_set(calibration, inside, statistics(images), name)
    return report


def _flag_rate(calibration: Calibration | None, stats: dict[str, Tensor]) -> float | None:
    """Share of the images flagged at the default rate (None uncalibrated)."""
    if calibration is None:
        return None
    return flag_rate(calibration.p_values(score_of(stats, calibration)), DEFAULT_FPR)


def _one_set(
    calibration: Calibration | None,
    inside: dict[str, Tensor],
    outside: dict[str, Tensor],
    name: str,
) -> dict[str, Any]:
    scores = score_of(outside, calibration)
    return {
        "n": len(outside["neg_elbo_nats"]),
        "target": None if name in TARGETLESS else AUROC_TARGET,
        "flagged": _flag_rate(calibration, outside),
        "score": detection(score_of(inside, calibration), scores),
        "neg_elbo": detection(inside[ELBO], outside[ELBO]),
        "complexity_corrected": detection(inside[CORRECTED], outside[CORRECTED]),
    }


def format_ood(report: dict[str, Any]) -> str:
    """The table ``vae-eval --ood`` prints. flagged: the share of the set flagged at the
    default false-positive rate; S(x): Serrà et al.'s complexity-corrected score."""
    head = f"{'OOD set':16} {'n':>5}  {report['score'] + ' AUROC':>18} {'AUPR':>6} {'FPR95':>6}"
    head += f" {'flagged':>7}  | {'-ELBO AUROC':>11} {'AUPR':>6} {'FPR95':>6}  | "
    head += f"{'S(x) AUROC':>10}  target"
    lines = [head]
    for name, row in report["sets"].items():
        s, e = row["score"], row["neg_elbo"]
        lines.append(
            f"{name:16} {row['n']:>5}  {s['auroc']:>18.3f} {s['aupr']:>6.3f} "
            f"{s['fpr_at_95_tpr']:>6.3f} {_percent(row['flagged']):>7}  | {e['auroc']:>11.3f} "
            f"{e['aupr']:>6.3f} "
            f"{e['fpr_at_95_tpr']:>6.3f}  | {row['complexity_corrected']['auroc']:>10.3f}  "
            f"{_verdict(row)}"
        )
    lines.append(_flag_line(report))
    return "\n".join(lines)


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{share:.1%}"


def _verdict(row: dict[str, Any]) -> str:
    if row["target"] is None:
        return "none (reported only)"
    met = row["score"]["auroc"] >= row["target"]
    return f">= {row['target']}: {'met' if met else 'MISSED'}"


def _flag_line(report: dict[str, Any]) -> str:
    n, rate = report["n_in_distribution"], report["flag_rate"]
    if rate is None:
        return f"in-distribution flag rate: the model is uncalibrated (vae-calibrate); n = {n}"
    low, high = FLAG_RATE_RANGE
    verdict = "met" if low <= rate <= high else "MISSED"
    return (
        f"in-distribution flagged at nominal {report['nominal_fpr']:.0%}: {rate:.2%} of {n} "
        f"test images not calibrated on (target {low:.1%} to {high:.1%}: {verdict})"
    )
