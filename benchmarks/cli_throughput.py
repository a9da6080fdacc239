r"""The whole training CLI against the train step alone: how much of the step's throughput a real run keeps.

  python -m benchmarks.cli_throughput                 # T5 1.1 Small, batch 8, inputs 128 + prompt 100, targets 8
  python -m benchmarks.cli_throughput --steps=60 --stats_period=10

`python -m prompt_tuning.train` runs the reference shape (random frozen weights, float32 activations) on the demo
world's `demo_sentiment` SeqIO task (real token sequences, padded to 128), with one save and one evaluation at the
end. Its TensorBoard `timing/steps_per_second` over each stats period after the first (the first holds the
compilation) is its throughput between evaluations; `timing/evaluate_seconds` is its evaluation pass (rank
classification of the 500 validation reviews). The step alone is `benchmarks.jax_step` (the same jitted step on
one fixed batch), timed before and after the CLI run in a worker process started, like the CLI, with this
environment. The input pipeline alone is the task's SeqIO dataset, converted and batched as the trainer reads it.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import functools
import multiprocessing
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

from benchmarks import cli_flags
from benchmarks.shapes import StepShape
from benchmarks.step_time import HUGEPAGES_TUNABLE, _machine

TASK_MODULE, TASK = "prompt_tuning.data.demo", "demo_sentiment"


def train_command(model_dir: pathlib.Path, shape: StepShape, steps: int, stats_period: int, size: str,
                  eval_at_end: bool) -> list[str]:
  """The prompt-tuning CLI on the reference shape: random frozen weights, the demo task and its vocabulary."""
  return [sys.executable, "-m", "prompt_tuning.train", f"--gin_file=models/t5_1_1_{size}_prompt.gin",
          "--gin_file=runs/prompt_finetune.gin", "--gin_file=sweeps/demo_vocab.gin",
          "--gin.NUM_EMBEDDINGS=32128", "--gin.ACTIVATION_DTYPE='float32'", "--gin.INITIAL_CHECKPOINT_PATH=None",
          f"--gin.MIXTURE_OR_TASK_MODULE='{TASK_MODULE}'", f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
          f"--gin.TASK_FEATURE_LENGTHS={{'inputs': {shape.input_length}, 'targets': {shape.target_length}}}",
          f"--gin.PROMPT_LENGTH={shape.prompt_length}", f"--gin.BATCH_SIZE={shape.batch}",
          f"--gin.TRAIN_STEPS={steps}", f"--gin.STATS_PERIOD={stats_period}", f"--gin.SAVE_PERIOD={steps}",
          f"--gin.EVAL_PERIOD={steps if eval_at_end else 0}", f"--gin.MODEL_DIR='{model_dir}'"]


def step_only_rate(shape: StepShape, size: str, steps: int) -> float:
  """Steps/s of the jitted prompt-tuning step alone (compiled and warmed up first)."""
  from benchmarks import jax_step
  from prompt_tuning.models.config import get_config
  step = jax_step.build_step(get_config(size, dtype="float32"), shape, "prompt")
  step.run(2)
  return steps / step.run(steps)


def input_pipeline_rate(shape: StepShape, batches: int) -> float:
  """Batches/s of the task's training dataset as the trainer reads it (SeqIO task, feature converter, batch)."""
  import importlib
  import seqio
  importlib.import_module(TASK_MODULE)
  ds = seqio.get_dataset(TASK, {"inputs": shape.input_length, "targets": shape.target_length},
                         dataset_split="train", shuffle=True, num_epochs=None, seed=0, batch_size=shape.batch,
                         feature_converter=seqio.EncDecFeatureConverter(pack=False)).as_numpy_iterator()
  next(ds)
  start = time.perf_counter()
  for _ in range(batches):
    next(ds)
  return batches / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="small", help="a models/t5_1_1_<size>_prompt.gin size")
  cli_flags.add_shape_flags(parser)
  parser.add_argument("--steps", type=int, default=60, help="CLI training steps (the first stats period compiles)")
  parser.add_argument("--stats_period", type=int, default=10)
  parser.add_argument("--step_only_steps", type=int, default=10, help="steps timed for the step alone, per round")
  parser.add_argument("--no_eval", action="store_true", help="skip the CLI's evaluation at the end")
  parser.add_argument("--json", default=None, help="also write the full results here")
  args = parser.parse_args(argv)
  if args.steps < 2 * args.stats_period:
    parser.error(f"--steps={args.steps} needs at least two stats periods of {args.stats_period} (the first compiles)")
  shape = cli_flags.shape_from_flags(args)
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ["GLIBC_TUNABLES"] = ":".join(t for t in (os.environ.get("GLIBC_TUNABLES"), HUGEPAGES_TUNABLE) if t)
  repo = pathlib.Path(__file__).resolve().parents[1]
  # The step alone runs in a worker process started, like the CLI, with the environment set here (GLIBC_TUNABLES
  # is read when a process starts), before and after the CLI run.
  with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
    step_alone = functools.partial(pool.submit, step_only_rate, shape, args.size, args.step_only_steps)
    step_rates = [step_alone().result()]
    with tempfile.TemporaryDirectory() as tmp:
      model_dir = pathlib.Path(tmp) / "run"
      command = train_command(model_dir, shape, args.steps, args.stats_period, args.size, not args.no_eval)
      start = time.perf_counter()
      proc = subprocess.run(command, cwd=repo, capture_output=True, text=True)
      wall = time.perf_counter() - start
      if proc.returncode != 0:
        raise SystemExit(f"the train CLI failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
      from prompt_tuning.runtime.summaries import read_scalars
      scalars = read_scalars(model_dir / "train")
    step_rates.append(step_alone().result())
  periods = scalars["timing/steps_per_second"][1:]  # the first period holds the compilation
  cli_rate = statistics.median(v for _, v in periods)
  step_rate = statistics.median(step_rates)
  pipeline = input_pipeline_rate(shape, 4 * args.stats_period)
  summary = {
      "cli_steps_per_s": cli_rate, "cli_steps_per_s_by_period": periods, "step_only_steps_per_s": step_rates,
      "cli_over_step_only": cli_rate / step_rate, "input_pipeline_batches_per_s": pipeline,
      "input_pipeline_share_if_serial": step_rate / pipeline, "cli_wall_s": wall,
      "evaluate_seconds": [v for _, v in scalars.get("timing/evaluate_seconds", [])],
      "command": " ".join(["python -m benchmarks.cli_throughput", *(argv if argv is not None else sys.argv[1:])]),
      "train_command": " ".join(command[1:]), "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "machine": _machine(), "load_average_1min": os.getloadavg()[0]}
  print(f"CLI {cli_rate:.3f} steps/s (median of {len(periods)} stats periods after the first) vs the step alone "
        f"{step_rate:.3f} steps/s (before and after: {[round(r, 3) for r in step_rates]}): "
        f"{summary['cli_over_step_only']:.0%}")
  print(f"input pipeline alone: {pipeline:.1f} batches/s ({summary['input_pipeline_share_if_serial']:.1%} of a step "
        f"if it ran in series); evaluation pass: {summary['evaluate_seconds']} s; CLI wall {wall:.0f} s")
  cli_flags.write_json(summary, args.json)
  return summary


if __name__ == "__main__":
  main()
