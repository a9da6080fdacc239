r"""Restoring frozen weights from a T5X checkpoint: time, peak host memory and bytes read, per process.

  python benchmarks/restore.py --legacy_checkout=../main            # Large-sized checkpoint, 8 devices, 8-way model
  python benchmarks/restore.py --num_layers=8 --json=restore.json   # a smaller Large-width checkpoint

Writes a synthetic T5X native checkpoint of a T5 1.1 model (random float32 values, gzip level 1, one zarr chunk
per device shard as T5X chunks them), then restores its frozen weights the way a training run does
(`state_init.build_run_params`) in fresh processes: one process with 8 simulated CPU devices, and two
`jax.distributed` processes with 4 each. Each restore runs twice, once with this checkout ('shard by shard') and,
given `--legacy_checkout` (a checkout of the code before TensorStore restores: every process reads every array
whole, then cuts out its shards), once with that one. A process reports its restore's wall time, its peak
resident memory (VmHWM) against its resident memory just before, and the bytes it read through read system calls
(`rchar` of /proc/self/io, so both code paths are counted the same way) and, for this checkout, TensorStore's
own count. The files were just written, so reads come from the page cache: the times compare decoding and
placement, not disks.

The same sharding arithmetic the byte counts check (a process reads the chunks of the shards its devices hold
plus the replicated arrays) gives the on-paper table: what one host of a v3-32 or v4-64 slice reads for XXL.

Run as a script (not `-m`) so that the worker processes import `prompt_tuning` from the checkout they are given.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
GIB, MIB = 2.0**30, 2.0**20
SHAPES = {"encoder_input_tokens": (8, 8), "decoder_input_tokens": (8, 8)}
# Slices for the on-paper table: (name, devices, hosts). v3-32: 4 hosts of 8 TensorCores; v4-64: 8 hosts of 4
# chips (megacore: one device per chip).
SLICES = (("v3-32", 32, 4), ("v4-64", 32, 8))


def _model(size: str, num_layers: int | None):
  import jax.numpy as jnp
  from prompt_tuning import prompts
  from prompt_tuning.family import PromptFamily
  from prompt_tuning.models import EncoderDecoder, get_config
  from prompt_tuning.runtime.models import EncoderDecoderModel
  layers = {} if not num_layers else {"num_encoder_layers": num_layers, "num_decoder_layers": num_layers}
  cfg = get_config(size, dtype=jnp.float32, **layers)
  return EncoderDecoderModel(EncoderDecoder(cfg, PromptFamily(lambda: prompts.PromptedInputs(prompts.Prompt(4)))))


def _frozen_specs(model) -> dict[str, tuple[tuple[int, ...], Any]]:
  """{path: (shape, PartitionSpec)} of the frozen parameters under the default rules."""
  import jax
  from flax import traverse_util
  import flax.linen as nn
  from prompt_tuning.runtime.partitioning import Partitioner
  partitioner = Partitioner(num_partitions=1)  # the specs depend on the rules only, not on the mesh
  partitioner.add_logical_axis_rules(model.family.logical_axis_rules)
  boxed = jax.eval_shape(lambda k: model.get_initial_variables(k, SHAPES), jax.random.PRNGKey(0))["params"]
  specs = traverse_util.flatten_dict(partitioner.params_specs(boxed), sep="/")
  shapes = traverse_util.flatten_dict(nn.meta.unbox(boxed), sep="/")
  return {k: (tuple(shapes[k].shape), specs[k]) for k in shapes if "prompt" not in k}


def host_bytes(specs: dict[str, tuple[tuple[int, ...], Any]], devices: int, hosts: int, partitions: int,
               itemsize: int = 4) -> tuple[int, int]:
  """(bytes one host reads shard by shard, bytes of the whole model) on a [devices/partitions, partitions] mesh.

  The mesh is ours (`partitioning._device_grid`): devices ordered by host, 'model' the minor axis. A host reads
  each parameter's shards at the 'model' coordinates of its devices (parameters are not split over 'data');
  replicated parameters whole.
  """
  per_host = devices // hosts
  model_coords = {i % partitions for i in range(per_host)}  # host 0; every host holds as many
  local = total = 0
  for shape, spec in specs.values():
    size = math.prod(shape) * itemsize
    total += size
    local += size * len(model_coords) // partitions if "model" in tuple(spec) else size
  return local, total


# ------------------------------------------------------------------------------------------------- the worker
def _rchar() -> int:
  with open("/proc/self/io") as f:
    return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def _status_kib(field: str) -> int:
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def worker(args: argparse.Namespace) -> None:
  """One process of one restore: prints a JSON line of its figures."""
  import jax
  if args.processes > 1:
    jax.distributed.initialize(f"localhost:{args.port}", num_processes=args.processes, process_id=args.process_id)
  from prompt_tuning.runtime.configs import RestoreCheckpointConfig
  from prompt_tuning.runtime.partitioning import Partitioner
  from prompt_tuning.runtime.state_init import build_run_params
  model = _model(args.size, args.num_layers)
  partitioner = Partitioner(num_partitions=args.partitions)
  restore = RestoreCheckpointConfig(path=args.checkpoint, assignment_map=((r".*prompt.*", None),),
                                    fallback_to_scratch=True)
  try:
    from prompt_tuning.runtime.checkpoints import zarr_store
    ts_bytes = zarr_store.bytes_read
  except ImportError:  # the legacy checkout reads without TensorStore
    ts_bytes = lambda: 0
  rss_before, rchar_before, ts_before = _status_kib("VmRSS"), _rchar(), ts_bytes()
  start = time.perf_counter()
  run = build_run_params(model, partitioner, SHAPES, restore, [".*/prompt/.*"], jax.random.PRNGKey(0))
  jax.block_until_ready(run.frozen)
  seconds = time.perf_counter() - start
  local = sum(s.data.nbytes for x in jax.tree_util.tree_leaves(run.frozen) for s in x.addressable_shards)
  print(json.dumps({"process": jax.process_index(), "seconds": seconds, "rss_before_gib": rss_before * 1024 / GIB,
                    "peak_rss_gib": _status_kib("VmHWM") * 1024 / GIB, "rchar_gib": (_rchar() - rchar_before) / GIB,
                    "tensorstore_gib": (ts_bytes() - ts_before) / GIB, "device_bytes_gib": local / GIB}), flush=True)


# ------------------------------------------------------------------------------------------------- the parent
def _write_checkpoint(args: argparse.Namespace, model_dir: str) -> str:
  """The synthetic checkpoint (reused when it exists): random normal values, chunks = 8-device shard shapes."""
  import numpy as np
  from flax import traverse_util
  from prompt_tuning.runtime.checkpoints import formats, t5x_native
  done = formats.checkpoint_dir(model_dir, 1)
  if done.exists():
    return str(done)
  specs = _frozen_specs(_model(args.size, args.num_layers))
  rng = np.random.default_rng(0)
  values, chunks = {}, {}
  for name, (shape, spec) in specs.items():
    values[name] = rng.standard_normal(shape, dtype=np.float32)
    chunks["target." + name.replace("/", ".")] = [n // args.partitions if axis == "model" else n
                                                  for n, axis in zip(shape, tuple(spec) + (None,) * len(shape))]
  start = time.perf_counter()
  out = t5x_native.save_t5x_checkpoint(model_dir, 1, traverse_util.unflatten_dict(values, sep="/"),
                                       chunk_shapes=chunks)
  print(f"wrote {out} in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
  return out


def _run(args: argparse.Namespace, checkout: str, checkpoint: str, processes: int) -> list[dict[str, Any]]:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=checkout,
             XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // processes}")
  command = [sys.executable, os.path.abspath(__file__), "--worker", f"--checkpoint={checkpoint}",
             f"--size={args.size}", f"--num_layers={args.num_layers or 0}", f"--partitions={args.partitions}",
             f"--processes={processes}", f"--port={port}"]
  procs = [subprocess.Popen([*command, f"--process_id={i}"], env=env, cwd=checkout, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(processes)]
  rows = []
  for proc in procs:
    out, err = proc.communicate(timeout=3600)
    if proc.returncode:
      raise RuntimeError(f"restore worker failed ({checkout}):\n{err[-4000:]}")
    rows.append(json.loads(out.strip().splitlines()[-1]))
  return rows


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", default="large")
  parser.add_argument("--num_layers", type=int, default=0, help="encoder and decoder layers (0: the size's own)")
  parser.add_argument("--partitions", type=int, default=8, help="size of the 'model' mesh axis (of 8 devices)")
  parser.add_argument("--dir", default="/tmp/prompt_tuning_restore_benchmark")
  parser.add_argument("--legacy_checkout", default="", help="a checkout of the whole-array restore, to compare")
  parser.add_argument("--rounds", type=int, default=1)
  parser.add_argument("--json", default="")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  for name in ("checkpoint", "processes", "port", "process_id"):
    parser.add_argument(f"--{name}", default="" if name == "checkpoint" else 1, type=str if name == "checkpoint"
                        else int, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    worker(args)
    return
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, CHECKOUT)
  checkpoint = _write_checkpoint(args, args.dir)
  size_gib = sum(f.stat().st_size for f in __import__("pathlib").Path(checkpoint).rglob("*") if f.is_file()) / GIB
  specs = _frozen_specs(_model(args.size, args.num_layers))
  paths = [("shard by shard", CHECKOUT)] + ([("whole arrays", os.path.abspath(args.legacy_checkout))]
                                            if args.legacy_checkout else [])
  results = []
  for _ in range(args.rounds):
    for processes in (1, 2):
      for label, checkout in paths:
        for row in _run(args, checkout, checkpoint, processes):
          predicted, total = host_bytes(specs, 8, processes, args.partitions)
          results.append({"path": label, "processes": processes, **row, "predicted_gib": predicted / GIB,
                          "model_gib": total / GIB})
          print(json.dumps(results[-1]), flush=True)
  print(f"\ncheckpoint {checkpoint}: {size_gib:.2f} GiB on disk, {args.partitions}-way model parallel on 8 devices")
  print("| path | processes | process | restore s | RSS before GiB | peak RSS GiB | on devices GiB | "
        "read GiB (rchar) | TensorStore GiB | its share of the files GiB |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in results:  # the share: the predicted fraction of the model, of the (compressed) files
    share = r["predicted_gib"] / r["model_gib"] * size_gib
    print(f"| {r['path']} | {r['processes']} | {r['process']} | {r['seconds']:.1f} | {r['rss_before_gib']:.2f} | "
          f"{r['peak_rss_gib']:.2f} | {r['device_bytes_gib']:.2f} | {r['rchar_gib']:.2f} | "
          f"{r['tensorstore_gib']:.2f} | {share:.2f} |")
  xxl = _frozen_specs(_model("xxl", 0))
  paper = []
  print("\nXXL (float32), on paper: bytes one host reads")
  print("| slice | hosts | model partitions | whole arrays GiB/host | shard by shard GiB/host |")
  print("|---|---|---|---|---|")
  for name, devices, hosts in SLICES:
    for partitions in (8, 16, 32):
      local, total = host_bytes(xxl, devices, hosts, partitions)
      paper.append({"slice": name, "hosts": hosts, "partitions": partitions, "whole_gib": total / GIB,
                    "sharded_gib": local / GIB})
      print(f"| {name} | {hosts} | {partitions} | {total / GIB:.1f} | {local / GIB:.1f} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"measured": results, "xxl_on_paper": paper, "checkpoint_gib": size_gib}, f, indent=1)


if __name__ == "__main__":
  main()
