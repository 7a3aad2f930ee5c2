"""Attention rollout (Abnar and Zuidema, 2020) for MBT, through the bottleneck tokens.

Every layer mixes tokens by its attention. Rollout models a block as A' = 0.5 * mean_heads(A) + 0.5 * I (the
residual connection), rows renormalised, and multiplies these through the layers: R = A'_L ... A'_1. Row i of R says
how much each input token contributed to output token i.

MBT runs one block per modality and layer, so the layer matrix is assembled over one global token index:
  [tokens of each present modality, in `modality_fusion` order (CLS first with the token head) ; bottleneck tokens]
The modality spans are the model's own (`MBTOutput.token_slices`). Each layer follows the model's fusion plan
(`MBT.fusion_plan`, the schedule `forward` walks): a block run attends from its query token sets over
[context ; queries], so its rows of the layer matrix are its attention placed at those columns; a token set that
several runs update (the bottleneck: one copy per modality, averaged by the model) gets the mean of their rows; a
set that no run updates (the bottleneck before `fusion_layer`) is carried unchanged (identity rows). So:
  - layers before `fusion_layer` (or no fusion): block-diagonal, each modality over its own tokens;
  - bottleneck fusion: modality m's rows over [own tokens ; bottleneck], bottleneck rows the mean over modalities;
  - vanilla fusion, shared encoder: one block over all tokens;
  - vanilla fusion, separate weights: modality m's queries over [other modalities (rgb, spectrogram order) ; own].
The classification output reads the final tokens: with a pooled head ('gap', 'gmp', 'gsp') their mean, with the
token head the mean of the modalities' CLS tokens (the logits are the mean of the per-CLS logits). The relevance of
the input tokens is that output row of R; it is returned as a heat map over each modality's patch grid.

The attention weights come from `Attention.record` (`record_attention`): the model runs once, unchanged.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
from torch import Tensor

from ..models.mbt import BOTTLENECK, MBT, Attention


@contextlib.contextmanager
def record_attention(model: MBT) -> Iterator[list[Tensor]]:
    """Within the block, every attention call of `model` appends its weights (B, H, N, M) to the yielded list,
    in call order. The model's outputs are unchanged."""
    store: list[Tensor] = []
    modules = [m for m in model.modules() if isinstance(m, Attention)]
    for m in modules:
        m.record = store
    try:
        yield store
    finally:
        for m in modules:
            m.record = None


def _residual(a: Tensor) -> Tensor:
    """(B, H, N, M) attention -> (B, N, M): head mean, plus identity on the query tokens' own key columns
    (the last N keys: a block's own tokens are always the last keys), rows renormalised."""
    a = a.mean(dim=1)
    n, m = a.shape[-2:]
    eye = torch.zeros(n, m, dtype=a.dtype, device=a.device)
    eye[:, m - n:] = torch.eye(n, dtype=a.dtype, device=a.device)
    a = 0.5 * a + 0.5 * eye
    return a / a.sum(dim=-1, keepdim=True)


@dataclass
class Rollout:
    """The result of `attention_rollout`.

    Attributes:
      logits: (B, num_classes), the model's output for the inputs.
      relevance: (B, N_total), the rolled-out attention of the classification output over every input token of the
        global index (see the module docstring); each row sums to 1.
      maps: {modality: (B, *grid)}: relevance over the patch grid: rgb (t, h, w) per tubelet, spectrogram
        (time, mel); CLS tokens excluded.
      bottleneck: (B, n_bottlenecks) relevance of the initial bottleneck tokens (None without bottleneck fusion).
      spans: {name: slice} of each modality and 'bottleneck' in the global index.
    """

    logits: Tensor
    relevance: Tensor
    maps: dict[str, Tensor]
    bottleneck: Tensor | None
    spans: dict[str, slice]


@torch.no_grad()
def attention_rollout(model: MBT, inputs: Mapping[str, Tensor | None]) -> Rollout:
    """Attention rollout of `model` (put in eval mode) on a batch of `inputs` ({modality: (B, ...)}, as `model`)."""
    model.eval()
    cfg = model.config
    with record_attention(model) as attn:
        out = model(inputs)
    present = list(out.token_slices)
    plan = model.fusion_plan(present)  # the schedule the forward pass just walked
    batch = out.logits.shape[0]
    spans: dict[str, slice] = dict(out.token_slices)
    total = out.tokens.shape[1]
    if model.uses_bottleneck():
        spans[BOTTLENECK] = slice(total, total + cfg.n_bottleneck_tokens)
        total += cfg.n_bottleneck_tokens
    columns = {name: torch.arange(s.start, s.stop) for name, s in spans.items()}
    eye = torch.eye(total, dtype=torch.float32).expand(batch, total, total)
    rollout = eye.clone()
    calls = iter(attn)
    for step in plan:
        a_layer = eye.clone()
        rows: dict[str, list[Tensor]] = {}
        for run in step.runs:
            record = next(calls, None)
            if record is None:
                raise RuntimeError("attention rollout: the model made fewer attention calls than its fusion plan")
            cols = torch.cat([columns[name] for name in run.context + run.queries])
            n_queries = len(cols) - sum(len(columns[c]) for c in run.context)
            a = _residual(record)[:, -n_queries:]  # (B, queries, keys): the queries are the last keys
            placed = torch.zeros(batch, n_queries, total)
            placed[:, :, cols] = a
            for q, part in zip(run.queries, placed.split([len(columns[q]) for q in run.queries], dim=1)):
                rows.setdefault(q, []).append(part)
        for q, parts in rows.items():
            a_layer[:, spans[q], :] = torch.stack(parts).mean(dim=0)
        rollout = a_layer @ rollout
    if next(calls, None) is not None:
        raise RuntimeError("attention rollout: the model made more attention calls than its fusion plan has")

    # The output row: mean of the CLS rows (token head) or of all final modality tokens (pooled heads).
    if cfg.classifier == "token":
        output_rows = [spans[m].start for m in present]
    else:
        output_rows = [i for m in present for i in range(spans[m].start, spans[m].stop)]
    relevance = rollout[:, output_rows].mean(dim=1)  # (B, total)
    maps = {}
    for m in present:
        s = spans[m]
        patches = relevance[:, s.start + (1 if cfg.classifier == "token" else 0): s.stop]
        grid = cfg.token_grid(m)
        if m == "rgb" and cfg.temporal_encoding != "3d_conv":
            n = len(cfg.rgb_frame_indices)
            grid = (n, grid[1] // n, grid[2])  # frames were stacked along h
        maps[m] = patches.reshape(batch, *grid)
    bottleneck = relevance[:, spans[BOTTLENECK]] if BOTTLENECK in spans else None
    return Rollout(out.logits, relevance, maps, bottleneck, spans)


__all__ = ["attention_rollout", "record_attention", "Rollout"]
