"""This machine's measured matmul peak: the best FLOP/s of square matmuls (float32 on CPU, bfloat16 on GPU).

  python -m benchmarks.matmul_peak [--device=cpu|gpu] [--dtype=float32] [--sizes=1024,2048] [--torch]

The peak is measured, not taken from a data sheet: it is what a well-shaped matmul actually reaches here, so
a train step's FLOP/s over it is the share of the attainable compute that the step uses.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time
from typing import Sequence

from benchmarks import cli_flags

DEFAULT_SIZES = (1024, 2048)
# A data-centre GPU needs bigger products to reach its peak: a 2048² bf16 matmul takes ~20 µs on an H100-class
# card, the scale of a kernel launch, so the small sizes would understate the peak and overstate utilisation.
GPU_SIZES = (4096, 8192)


def default_dtype(device: str) -> str:
  return "bfloat16" if device == "gpu" else "float32"


def default_sizes(device: str) -> tuple[int, ...]:
  return GPU_SIZES if device == "gpu" else DEFAULT_SIZES


def _best_rate(run, flops: float, repeats: int) -> float:
  """FLOP/s of the fastest of `repeats` timed calls (the machine is shared: the best is the least disturbed)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return flops / min(times)


@functools.lru_cache(maxsize=None)
def _chained_matmuls(chain: int):
  """A jitted function of `chain` dependent matmuls (one dispatch, so dispatch overhead is amortised)."""
  import jax
  import jax.numpy as jnp

  def chained(a, b):
    for _ in range(chain):
      a = (a @ b) * jnp.asarray(1e-3, a.dtype)  # the scale keeps values finite; its cost is O(n²)
    return a

  return jax.jit(chained)


def jax_matmul_peak(dtype: str = "float32", sizes: Sequence[int] = DEFAULT_SIZES, repeats: int = 5,
                    chain: int = 4) -> dict[str, float]:
  """Best FLOP/s of `chain` dependent n×n matmuls per call, for each size n."""
  import jax

  chained = _chained_matmuls(chain)
  rates = {}
  for n in sizes:
    keys = jax.random.split(jax.random.PRNGKey(n))
    a, b = (jax.random.normal(k, (n, n), dtype) for k in keys)
    chained(a, b).block_until_ready()
    rates[str(n)] = _best_rate(lambda: chained(a, b).block_until_ready(), 2.0 * chain * n**3, repeats)
  return rates


def torch_matmul_peak(dtype: str = "float32", sizes: Sequence[int] = DEFAULT_SIZES, repeats: int = 5,
                      device: str = "cpu") -> dict[str, float]:
  """The same measurement with PyTorch (MKL/oneDNN on CPU, cuBLAS on GPU)."""
  import torch

  dev = "cuda" if device == "gpu" else "cpu"
  sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
  rates = {}
  for n in sizes:
    a = torch.randn(n, n, dtype=getattr(torch, dtype), device=dev)
    b = torch.randn(n, n, dtype=getattr(torch, dtype), device=dev)
    a @ b
    sync()

    def run():
      a @ b
      sync()

    rates[str(n)] = _best_rate(run, 2.0 * n**3, repeats)
  return rates


def summarise(rates: dict[str, float]) -> dict[str, float]:
  return {"peak_flops": max(rates.values()), "median_over_sizes": statistics.median(rates.values()), **rates}


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
  parser.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on GPU")
  parser.add_argument("--sizes", default=None, help=f"comma-separated n of the n×n matmuls; default "
                      f"{','.join(map(str, DEFAULT_SIZES))} on CPU, {','.join(map(str, GPU_SIZES))} on GPU")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--torch", action="store_true", help="also measure PyTorch's matmul")
  args = parser.parse_args(argv)
  if args.device == "gpu":
    cli_flags.require_jax_gpu()
  os.environ["JAX_PLATFORMS"] = "cuda" if args.device == "gpu" else "cpu"  # before jax is imported
  dtype = args.dtype or default_dtype(args.device)
  sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(default_sizes(args.device))
  out = {"device": args.device, "dtype": dtype, "jax": summarise(jax_matmul_peak(dtype, sizes, args.repeats))}
  if args.torch:
    out["torch"] = summarise(torch_matmul_peak(dtype, sizes, args.repeats, args.device))
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
