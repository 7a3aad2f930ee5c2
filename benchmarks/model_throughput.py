"""Inference throughput of MBT on this machine's CPU, next to the machine's fp32 matrix-multiply rate.

    python benchmarks/model_throughput.py [--preset mbt-b16x2] [--batch-sizes 1 4] [--repeats 3]

For each batch size it prints seconds per batch, clips per second and the achieved GFLOP/s (FLOPs of one forward
pass, counted with torch.utils.flop_counter on the meta device, 2 FLOPs per multiply-add), and that rate as a share
of the GFLOP/s of a large fp32 matmul measured in the same run. Eval mode, float32, torch.inference_mode.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from mbt import MBT, MBTConfig


def model_flops(config: MBTConfig, batch: int) -> int:
    """FLOPs of one eval forward pass. On the meta device attention decomposes into counted matmuls (the fused
    CPU attention kernel is invisible to FlopCounterMode)."""
    with torch.device("meta"):
        model = MBT(config).eval()
        inputs = {m: torch.empty(batch, *config.input_shape(m)) for m in config.modality_fusion}
        with FlopCounterMode(display=False) as counter:
            model(inputs)
    return counter.get_total_flops()


def matmul_gflops(n: int = 4096, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mbt-b16x2")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per batch size (after one warm-up)")
    args = parser.parse_args()

    config = MBTConfig.from_preset(args.preset)
    torch.manual_seed(0)
    model = MBT(config).eval()
    peak = matmul_gflops()
    print(f"# {args.preset}: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"# fp32 matmul 4096x4096: {peak:.1f} GFLOP/s")
    print("| batch | s / batch | clips / s | GFLOP / clip | GFLOP/s | share of matmul |")
    print("|---:|---:|---:|---:|---:|---:|")
    for batch in args.batch_sizes:
        flops = model_flops(config, batch)
        inputs = {m: torch.randn(batch, *config.input_shape(m)) for m in config.modality_fusion}
        with torch.inference_mode():
            model(inputs)  # warm-up
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                model(inputs)
                times.append(time.perf_counter() - t)
        sec = min(times)
        rate = flops / sec / 1e9
        print(f"| {batch} | {sec:.2f} | {batch / sec:.3f} | {flops / batch / 1e9:.1f} | {rate:.1f} | "
              f"{100 * rate / peak:.0f}% |")
    print(f"# matmul again after the runs: {matmul_gflops():.1f} GFLOP/s")


if __name__ == "__main__":
    main()
