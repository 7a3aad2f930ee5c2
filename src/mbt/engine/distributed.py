"""Process groups for `torchrun`: gloo on CPU, NCCL on GPU; one process per device.

Without torchrun (no WORLD_SIZE in the environment) everything runs in one process and the helpers are no-ops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist

from ..errors import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0, world_size: int = 1, field: str = "train.device"
                   ) -> torch.device:
    """'auto' -> this process's GPU (cuda:LOCAL_RANK) if CUDA is available, else the CPU. Under torchrun 'cuda'
    also means this process's GPU; an explicit index would put every process on one GPU and is refused."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{field} = {name!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{field} = {name!r} but CUDA is not available here; use 'cpu' or 'auto'")
    if device.type == "cuda" and world_size > 1:
        if device.index is not None:
            raise ConfigError(f"{field} = {name!r}: under torchrun each process uses its own GPU (cuda:LOCAL_RANK); "
                             "use 'cuda' or 'auto'")
        device = torch.device(f"cuda:{local_rank}")
    elif device.type == "cuda" and device.index is None:
        device = torch.device("cuda:0")
    return device


def setup(device: str = "auto", field: str = "train.device") -> DistInfo:
    """Join the process group if started by torchrun (WORLD_SIZE > 1), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank, world, field)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank, dev)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(value: float, info: DistInfo) -> float:
    return all_reduce_sums([value], info)[0]


def all_reduce_sums(values: Sequence[float], info: DistInfo) -> list[float]:
    """Sums over all processes of several numbers, in one collective."""
    if not info.distributed:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device(info))
    dist.all_reduce(t)
    return t.tolist()


def is_main_process() -> bool:
    """Rank 0, or not started by torchrun."""
    return int(os.environ.get("RANK", "0")) == 0


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def gather_objects(items: list, info: DistInfo) -> list:
    """Every process's `items` (picklable), concatenated in rank order; the list itself without torchrun."""
    if not info.distributed:
        return list(items)
    out: list = [None] * info.world_size
    dist.all_gather_object(out, list(items))
    return [x for part in out for x in part]


def gather_rows(tensors: Sequence[torch.Tensor], info: DistInfo) -> list[torch.Tensor]:
    """Concatenate row-aligned tensors (same first dimension within a rank, any across ranks) from every rank,
    rank 0's rows first. Every rank gets the result. Used to score metrics on the whole evaluation set."""
    if not info.distributed:
        return [t.cpu() for t in tensors]
    dev = _comm_device(info)
    n = torch.tensor([tensors[0].shape[0]], device=dev)
    sizes = [torch.zeros_like(n) for _ in range(info.world_size)]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    out = []
    for t in tensors:
        t = t.to(dev)
        padded = torch.zeros((max(sizes),) + tuple(t.shape[1:]), dtype=t.dtype, device=dev)
        padded[: t.shape[0]] = t
        parts = [torch.zeros_like(padded) for _ in range(info.world_size)]
        dist.all_gather(parts, padded)
        out.append(torch.cat([p[:s] for p, s in zip(parts, sizes)]).cpu())
    return out


def _comm_device(info: DistInfo) -> torch.device:
    # NCCL only moves CUDA tensors; gloo moves CPU tensors.
    return info.device if dist.get_backend() == "nccl" else torch.device("cpu")
