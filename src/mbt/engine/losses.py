"""The official MBT losses (reference F), per example so that callers choose the normalisation.

* multi-label (AudioSet, Scenic's `mbt_multilabel_classification`): sigmoid cross-entropy **summed over classes**;
* single-label (VGGSound, Kinetics, `mbt_classification`): softmax cross-entropy;
* multi-head (EPIC-KITCHENS verb + noun, `mbt_multihead_classification`): one softmax cross-entropy per head, the
  mean over heads.

Label smoothing follows Scenic: y <- y (1 - eps) + eps / K, with K the classes of the vector being smoothed (the
whole vector for multi- and single-label, each head's own for multi-head). With the token head in training, the loss
is computed for each modality's logits and the mean over modalities is taken (Scenic's dict-logits path).

A batch's loss is the sum of the per-example losses divided by the number of examples (Scenic divides by the
number of valid examples; the trainer divides by the valid examples of the whole, possibly distributed, step).
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.config import PROBLEM_TYPES


def smooth_labels(labels: Tensor, eps: float) -> Tensor:
    """(B, K) -> (B, K): y (1 - eps) + eps / K (Scenic's convention; also torch's `label_smoothing`)."""
    if not eps:
        return labels
    return labels * (1.0 - eps) + eps / labels.shape[-1]


def sigmoid_cross_entropy(logits: Tensor, labels: Tensor, eps: float = 0.0) -> Tensor:
    """(B, C), (B, C) -> (B,): binary cross-entropy of each class, summed over classes."""
    return F.binary_cross_entropy_with_logits(logits, smooth_labels(labels, eps), reduction="none").sum(-1)


def softmax_cross_entropy(logits: Tensor, labels: Tensor, eps: float = 0.0) -> Tensor:
    """(B, C), (B, C) soft or one-hot labels -> (B,): -sum_c y_c log softmax(logits)_c."""
    return -(smooth_labels(labels, eps) * F.log_softmax(logits, dim=-1)).sum(-1)


def multihead_cross_entropy(logits: Tensor, labels: Tensor, heads: Mapping[str, int], eps: float = 0.0) -> Tensor:
    """(B, sum K_h), (B, sum K_h) -> (B,): the mean over heads of each head's softmax cross-entropy (each head's
    labels smoothed with its own K_h)."""
    sizes = list(heads.values())
    if sum(sizes) != logits.shape[-1]:
        raise ValueError(f"heads {dict(heads)} sum to {sum(sizes)} but the logits have {logits.shape[-1]} classes")
    losses = [softmax_cross_entropy(lg, lb, eps) for lg, lb in zip(logits.split(sizes, -1), labels.split(sizes, -1))]
    return torch.stack(losses).mean(0)


def per_example_loss(logits: Tensor, labels: Tensor, problem_type: str, heads: Mapping[str, int] | None = None,
                     label_smoothing: float = 0.0) -> Tensor:
    """(B, C) logits and (B, C) float labels (multi-hot, one-hot, mixed) -> (B,) losses for `problem_type`."""
    if problem_type == "multi_label":
        return sigmoid_cross_entropy(logits, labels, label_smoothing)
    if problem_type == "single_label":
        return softmax_cross_entropy(logits, labels, label_smoothing)
    if problem_type == "multi_head":
        if not heads:
            raise ValueError("problem_type 'multi_head' needs heads, e.g. {'verb': 97, 'noun': 300}")
        return multihead_cross_entropy(logits, labels, heads, label_smoothing)
    raise ValueError(f"problem_type = {problem_type!r}; allowed: {PROBLEM_TYPES}")


def mbt_loss(output, labels: Tensor, problem_type: str, heads: Mapping[str, int] | None = None,
             label_smoothing: float = 0.0, per_modality: bool = True) -> Tensor:
    """(B,) per-example losses of an `MBTOutput`.

    With the token head and `per_modality` (training), the mean over modalities of each modality's loss
    (Scenic trains the per-modality logits), over the modalities each example has when some are flagged missing
    (`output.present`); otherwise the loss of the (modality-averaged) logits (Scenic's eval).
    """
    if per_modality and output.modality_logits:
        losses = torch.stack([per_example_loss(lg, labels, problem_type, heads, label_smoothing)
                              for lg in output.modality_logits.values()])  # (M, B)
        if output.present is None:
            return losses.mean(0)
        w = torch.stack([output.present[m] for m in output.modality_logits]).to(losses.dtype)  # (M, B)
        return (losses * w).sum(0) / w.sum(0)
    return per_example_loss(output.logits, labels, problem_type, heads, label_smoothing)
