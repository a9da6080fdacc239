"""Flags and output shared by the benchmark scripts: the batch shape, the --device check, the JSON copy of a result."""
from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
from typing import Any

from benchmarks.shapes import StepShape


def add_shape_flags(parser: argparse.ArgumentParser, batch: int = 8, input_length: int = 128,
                    target_length: int = 8, prompt_length: int = 100) -> None:
  """--batch, --input_length, --target_length, --prompt_length (defaults: the reference shape)."""
  parser.add_argument("--batch", type=int, default=batch)
  parser.add_argument("--input_length", type=int, default=input_length)
  parser.add_argument("--target_length", type=int, default=target_length)
  parser.add_argument("--prompt_length", type=int, default=prompt_length)


def add_warmup_flag(parser: argparse.ArgumentParser) -> None:
  """--warmup_steps_per_round: untimed runs right before each timed one (checked by `check_warmup_flag`)."""
  parser.add_argument("--warmup_steps_per_round", type=int, default=1,
                      help="untimed steps each run takes right before its timed steps, every round: on these "
                           "shared VMs a process that idled for seconds runs its next step up to 2x slower "
                           "(docs/benchmarks.md); a training loop never idles")


def check_warmup_flag(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  if args.warmup_steps_per_round < 0:
    parser.error(f"--warmup_steps_per_round={args.warmup_steps_per_round} must be >= 0 (0: time each run's first "
                 "step after the others ran).")


def shape_from_flags(args: argparse.Namespace) -> StepShape:
  return StepShape(args.batch, args.input_length, args.target_length, args.prompt_length)


def write_json(data: Any, path: str | None) -> None:
  """Write `data` to `path` (the scripts' --json flag); nothing when no path is given."""
  if path:
    with open(path, "w") as f:
      json.dump(data, f, indent=1, default=str)


GPU_INSTALL_HINT = ('pip install -U "jax[cuda12]==$(python -c \'import jax; print(jax.__version__)\')" '
                    "(see docs/benchmarks.md, 'On a GPU')")


def require_jax_gpu(timeout_s: float = 300.0) -> None:
  """For --device=gpu: fail at once, with the fix, when JAX has no GPU here.

  Without a CUDA plugin, JAX_PLATFORMS=cuda makes JAX raise a bare AssertionError inside every worker; this
  asks a throw-away process instead (JAX's backend cannot be re-initialised in this one), once per process.
  """
  problem = _jax_gpu_problem(timeout_s)
  if problem is not None:
    raise RuntimeError(problem)


@functools.lru_cache(maxsize=None)
def _jax_gpu_problem(timeout_s: float) -> str | None:
  """Why JAX cannot use a GPU here (None when it can), asked of a throw-away process."""
  code = "import jax; print(len(jax.devices('gpu')))"
  env = dict(os.environ, JAX_PLATFORMS="cuda")
  try:
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout_s)
  except subprocess.TimeoutExpired:
    return f"--device=gpu: JAX did not start its CUDA backend within {timeout_s:.0f} s."
  if proc.returncode != 0 or not proc.stdout.strip().isdigit() or int(proc.stdout.strip()) == 0:
    last = (proc.stderr.strip().splitlines() or ["no error text"])[-1]
    return (f"--device=gpu, but JAX finds no GPU here ({last}). Install the CUDA jaxlib for this jax: "
            f"{GPU_INSTALL_HINT}; or run with --device=cpu.")
  return None
