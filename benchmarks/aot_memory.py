r"""Per-device memory and FLOPs of XL/XXL train steps at scale, compiled ahead of time on a simulated CPU mesh.

  python -m benchmarks.aot_memory                       # XL and XXL, prompt and model tuning, 8 and 32 devices
  python -m benchmarks.aot_memory --sizes=xxl --layouts=32x32 --remat=none,full --json=aot.json

Nothing is allocated: parameters, optimizer state and batch are abstract shapes carrying the shardings a TPU run
uses (`Partitioner` with the default logical-axis rules plus the prompt rules; a `DxP` layout is D devices of
which P form the 'model' axis). Each device count runs in its own subprocess with
`XLA_FLAGS=--xla_force_host_platform_device_count=D`, the SPMD-partitioned step is compiled for the CPU, and
XLA's memory analysis gives the per-device bytes: arguments (parameters, optimizer state, batch) + outputs -
donated aliases + temporaries (activations kept for the backward pass, gradients, workspace). CPU buffer
assignment is not TPU's, so read the figures as estimates (a few per cent either way), not as guarantees.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Any, Sequence

from benchmarks import cli_flags
from benchmarks.shapes import StepShape

GIB = 2.0**30
DEVICE_BUDGETS_GIB = (16, 80)  # TPU v2/v3 core, A100/H100


@dataclasses.dataclass(frozen=True)
class Layout:
  devices: int
  partitions: int  # size of the 'model' axis; devices // partitions is the 'data' axis

  @classmethod
  def parse(cls, text: str) -> "Layout":
    try:
      devices, partitions = (int(x) for x in text.lower().split("x"))
    except ValueError:
      raise ValueError(f"Layout {text!r} must be DEVICESxPARTITIONS, e.g. 32x8.") from None
    if devices % partitions:
      raise ValueError(f"Layout {text!r}: {partitions} partitions do not divide {devices} devices.")
    return cls(devices, partitions)


def compile_one(size: str, mode: str, layout: Layout, shape: StepShape, remat: str, scan: bool,
                act_dims: int = 1) -> dict[str, Any]:
  """Compile one train step from abstract shapes in this process (which must see `layout.devices` devices)."""
  import jax
  from benchmarks import jax_step
  from benchmarks.flops import step_flops, xla_flops
  from prompt_tuning.models.config import get_config
  from prompt_tuning.runtime.partitioning import Partitioner, prompt_logical_axis_rules, standard_logical_axis_rules

  if jax.device_count() != layout.devices:
    raise RuntimeError(f"This process sees {jax.device_count()} devices, the layout needs {layout.devices}; run it "
                       f"with XLA_FLAGS=--xla_force_host_platform_device_count={layout.devices}.")
  config = get_config(size, scan_layers=scan, remat_policy=remat)  # bfloat16 activations, as on TPU
  rules = standard_logical_axis_rules(act_dims, 1, additional_rules=prompt_logical_axis_rules())
  partitioner = Partitioner(num_partitions=layout.partitions, logical_axis_rules=rules)
  start = time.perf_counter()
  compiled = jax_step.lower_abstract(config, shape, mode, partitioner).compile()
  mem = compiled.memory_analysis()
  per_device = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
                + mem.temp_size_in_bytes)
  run_shape = jax_step.mode_shape(shape, mode)
  return {"size": size, "mode": mode, "devices": layout.devices, "partitions": layout.partitions, "remat": remat,
          "scan_layers": scan, "activation_partitioning_dims": act_dims,
          "compile_s": round(time.perf_counter() - start, 1),
          "argument_gib": mem.argument_size_in_bytes / GIB, "output_gib": mem.output_size_in_bytes / GIB,
          "alias_gib": mem.alias_size_in_bytes / GIB, "temp_gib": mem.temp_size_in_bytes / GIB,
          "per_device_gib": per_device / GIB,
          # XLA counts a scanned loop's body once, so its count is only comparable for unrolled layers.
          "xla_flops_per_device": None if scan else xla_flops(compiled),
          "analytic_flops": step_flops(config, run_shape, mode),
          **{f"fits_{b}gib": per_device <= b * GIB for b in DEVICE_BUDGETS_GIB}}


def _worker(args: argparse.Namespace) -> None:
  """Inside the subprocess: compile every requested step for this device count, one JSON line each."""
  shape = cli_flags.shape_from_flags(args)
  for layout_text in args.layouts.split(","):
    layout = Layout.parse(layout_text)
    if layout.devices != args.worker_devices:
      continue
    for size in args.sizes.split(","):
      for mode in args.modes.split(","):
        for remat in args.remat.split(","):
          for act_dims in (int(d) for d in args.act_dims.split(",")):
            try:
              row = compile_one(size, mode, layout, shape, remat, not args.unrolled, act_dims)
            except Exception as e:  # pylint: disable=broad-except
              row = {"size": size, "mode": mode, "devices": layout.devices, "partitions": layout.partitions,
                     "remat": remat, "activation_partitioning_dims": act_dims,
                     "error": f"{type(e).__name__}: {str(e)[:300]}"}
            print("AOT " + json.dumps(row), flush=True)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
  lines = ["| model | tuning | devices (data×model) | remat | act. dims | per-device GiB (args + temp) | "
           "fits 16 GiB | fits 80 GiB | TFLOP/step (analytic) | TFLOP/step/device analytic (XLA) | compile s |",
           "|" + "---|" * 11]
  for r in rows:
    layout = f"{r['devices']} ({r['devices'] // r['partitions']}×{r['partitions']})"
    head = f"| {r['size'].upper()} | {r['mode']} | {layout} | {r['remat']} | {r['activation_partitioning_dims']} |"
    if "error" in r:
      lines.append(f"{head} error: {r['error']} |")
      continue
    xla = r["xla_flops_per_device"]
    lines.append(f"{head} {r['per_device_gib']:.1f} ({r['argument_gib']:.1f} + {r['temp_gib']:.1f}) | "
                 f"{'yes' if r['fits_16gib'] else 'no'} | {'yes' if r['fits_80gib'] else 'no'} | "
                 f"{r['analytic_flops'] / 1e12:.1f} | {r['analytic_flops'] / r['devices'] / 1e12:.2f} "
                 f"({'–' if xla is None else f'{xla / 1e12:.2f}'}) | {r['compile_s']} |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="xl,xxl")
  parser.add_argument("--modes", default="prompt,model")
  parser.add_argument("--layouts", default="8x8,32x32,32x8", help="DEVICESxPARTITIONS, comma-separated")
  parser.add_argument("--remat", default="none", help="remat policies to compare, e.g. none,full")
  parser.add_argument("--act_dims", default="1",
                      help="activation_partitioning_dims to compare (1: T5X default, 2: also shard 'embed')")
  parser.add_argument("--unrolled", action="store_true", help="unrolled layers instead of nn.scan (slow to compile)")
  # The reference XXL prompt-tuning run (sst2-demo-xxl.sh): batch 32, inputs 512, targets 8, prompt 100.
  cli_flags.add_shape_flags(parser, batch=32, input_length=512)
  parser.add_argument("--timeout", type=int, default=3600, help="seconds per device count")
  parser.add_argument("--json", default=None)
  parser.add_argument("--worker_devices", type=int, default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker_devices is not None:
    _worker(args)
    return []
  names = ("sizes", "modes", "layouts", "remat", "act_dims", "batch", "input_length", "target_length",
           "prompt_length")
  forwarded = [f"--{k}={getattr(args, k)}" for k in names]
  forwarded += ["--unrolled"] if args.unrolled else []
  rows = []
  for devices in sorted({Layout.parse(t).devices for t in args.layouts.split(",")}):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.aot_memory", *forwarded,
                           f"--worker_devices={devices}"], env=env, capture_output=True, text=True,
                          timeout=args.timeout, check=False)
    found = [json.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("AOT ")]
    if proc.returncode or not found:
      raise RuntimeError(f"The {devices}-device compile subprocess failed (exit {proc.returncode}):\n"
                         f"{proc.stderr[-3000:]}")
    rows += found
  print(format_table(rows))
  cli_flags.write_json(rows, args.json)
  return rows


if __name__ == "__main__":
  main()
