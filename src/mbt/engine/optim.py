"""Optimisers and the learning-rate schedule of the official recipe (reference E.1).

Schedule (Scenic's `constant * cosine_decay * linear_warmup`, per step, step 0 first):
    lr(s) = base_lr * min(1, s / W) * 0.5 * (1 + cos(pi * min(1, max(0, s - W) / (T - W))))
W = warm-up steps, T = total steps. The first update uses lr(0) = 0 when W > 0, as in Scenic.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from ..errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
# Parameters that never get weight decay: position embeddings, CLS and bottleneck tokens (as in timm/ViT practice).
NO_DECAY_NAMES = ("pos_embedding", "cls", "bottleneck")


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """The schedule's multiplier of base_lr at `step` (0-based)."""
    warm = min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(1.0, max(0, step - warmup_steps) / decay_steps)
    return warm * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
                   ) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup_steps, total_steps))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: kernels (decayed) and biases, norms, position embeddings, CLS and bottleneck tokens (not)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.split(".")[-1]
        (no_decay if p.ndim < 2 or leaf in NO_DECAY_NAMES else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                   nesterov: bool = False, betas: Iterable[float] = (0.9, 0.999), eps: float = 1e-8
                   ) -> torch.optim.Optimizer:
    """'sgd': torch SGD with momentum (dampening 0), which is flax.optim.Momentum, the official optimiser.
    'adamw': decoupled weight decay."""
    groups = param_groups(model, weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)
    raise ConfigError(f"optim.name = {name!r}; allowed: {OPTIMIZERS}")
