"""Attention rollout (Abnar and Zuidema, 2020) for MBT, through the bottleneck tokens.

Every layer mixes tokens by its attention. Rollout models a block as A' = 0.5 * mean_heads(A) + 0.5 * I (the
residual connection), rows renormalised, and multiplies these through the layers: R = A'_L ... A'_1. Row i of R says
how much each input token contributed to output token i.

MBT runs one block per modality and layer, so the layer matrix is assembled over one global token index:
  [tokens of each present modality, in `modality_fusion` order (CLS first with the token head) ; bottleneck tokens]
  - layers before `fusion_layer` (or no fusion): block-diagonal, each modality over its own tokens; the bottleneck
    tokens are carried unchanged (identity rows);
  - bottleneck fusion: modality m's block attends over [own tokens ; bottleneck]; its own rows come from that, and
    the new bottleneck rows are the mean over modalities of each modality's bottleneck rows (Scenic averages the
    updated bottleneck copies);
  - vanilla fusion, shared encoder: one block over all tokens;
  - vanilla fusion, separate weights: modality m's queries attend over [other modalities (rgb, spectrogram order) ;
    own tokens].
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

from ..models.mbt import MBT, MODALITIES, Attention


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
    present = model.present_modalities(inputs)
    batch = out.logits.shape[0]
    n_tokens = {m: cfg.num_tokens(m) for m in present}
    fusing = model.fuses()  # eval mode
    n_b = cfg.n_bottleneck_tokens if (cfg.use_bottleneck and fusing and cfg.fusion_layer < cfg.num_layers) else 0
    spans: dict[str, slice] = {}
    start = 0
    for m in present:
        spans[m] = slice(start, start + n_tokens[m])
        start += n_tokens[m]
    if n_b:
        spans["bottleneck"] = slice(start, start + n_b)
    total = start + n_b
    eye = torch.eye(total, dtype=torch.float32).expand(batch, total, total)
    rollout = eye.clone()
    calls = iter(attn)
    for layer in range(cfg.num_layers):
        a_layer = eye.clone()
        if not fusing or layer < cfg.fusion_layer:
            for m in present:
                s = spans[m]
                a_layer[:, s, s] = _residual(next(calls))
        elif cfg.use_bottleneck:
            b = spans["bottleneck"]
            a_layer[:, b, :] = 0.0
            for m in present:
                s = spans[m]
                a = _residual(next(calls))  # (B, N_m + n_b, N_m + n_b) over [own ; bottleneck]
                cols = torch.cat([torch.arange(s.start, s.stop), torch.arange(b.start, b.stop)])
                own = torch.zeros(batch, n_tokens[m], total)
                own[:, :, cols] = a[:, : n_tokens[m]]
                a_layer[:, s, :] = own
                bn = torch.zeros(batch, n_b, total)
                bn[:, :, cols] = a[:, n_tokens[m]:]
                a_layer[:, b, :] += bn / len(present)
        elif cfg.share_encoder:
            joint = slice(0, total)
            a_layer[:, joint, joint] = _residual(next(calls))
        else:
            for m in present:
                s = spans[m]
                others = [o for o in MODALITIES if o != m and o in spans]
                cols = torch.cat([torch.arange(spans[o].start, spans[o].stop) for o in others + [m]])
                rows = torch.zeros(batch, n_tokens[m], total)
                rows[:, :, cols] = _residual(next(calls))
                a_layer[:, s, :] = rows
        rollout = a_layer @ rollout
    if next(calls, None) is not None:
        raise RuntimeError("attention rollout: the model made more attention calls than its schedule has")

    # The output row: mean of the CLS rows (token head) or of all final modality tokens (pooled heads).
    if cfg.classifier == "token":
        rows = [spans[m].start for m in present]
    else:
        rows = [i for m in present for i in range(spans[m].start, spans[m].stop)]
    relevance = rollout[:, rows].mean(dim=1)  # (B, total)
    maps = {}
    for m in present:
        s = spans[m]
        patches = relevance[:, s.start + (1 if cfg.classifier == "token" else 0): s.stop]
        grid = cfg.token_grid(m)
        if m == "rgb" and cfg.temporal_encoding != "3d_conv":
            n = len(cfg.rgb_frame_indices)
            grid = (n, grid[1] // n, grid[2])  # frames were stacked along h
        maps[m] = patches.reshape(batch, *grid)
    bottleneck = relevance[:, spans["bottleneck"]] if n_b else None
    return Rollout(out.logits, relevance, maps, bottleneck, spans)


__all__ = ["attention_rollout", "record_attention", "Rollout"]
