r"""A bounded soak of the train CLI: many steps, frequent saves and evaluations; memory must stay flat.

  python -m prompt_tuning.scripts.soak --model_dir=/tmp/soak [--steps=2000 --save_period=20 --keep=3
      --eval_period=100 --rss_from_step=200 --max_rss_growth=0.05] [--result=soak.json]

Runs `prompt_tuning.train` in this process (the tiny T5 1.1 on the offline demo's `demo_sentiment` task and
vocabulary, frozen weights from scratch, only the prompt trains) and reads the process's resident memory (VmRSS)
at every progress line. It then checks: resident memory after `--rss_from_step` grows by less than
`--max_rss_growth`; exactly `--keep` checkpoints remain, the newest ones; every save's prompt export is there
and finite; every evaluation wrote its metrics; no temporary folder or trainer claim is left. It prints the
result as JSON (also to `--result`) and exits 1 when a check fails. `--model_dir` may be on gs:// to soak a bucket.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import runpy
import sys
import time
from typing import Any, Sequence

import numpy as np
from etils import epath

PROGRESS = re.compile(r"step (\d+)/(\d+)\s")
TASK = "demo_sentiment"
PROMPT_LENGTH = 5
EXPORT = "encoder.prompt.prompt.prompt"


def resident_kib() -> int | None:
  """This process's resident set size (VmRSS), or None where /proc is absent."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
  except (OSError, StopIteration):
    return None


class RssProbe(logging.Handler):
  """Records (step, resident KiB) at each of the trainer's progress lines."""

  def __init__(self):
    super().__init__()
    self.samples: list[tuple[int, int]] = []

  def emit(self, record: logging.LogRecord) -> None:
    match = PROGRESS.match(record.getMessage())
    rss = resident_kib()
    if match and rss is not None:
      self.samples.append((int(match.group(1)), rss))


def train_flags(args: argparse.Namespace) -> list[str]:
  return ["--gin_file=models/t5_1_1_demo_prompt.gin", "--gin_file=models/sizes/tiny.gin",
          "--gin_file=prompts/random_uniform.gin", "--gin_file=runs/prompt_finetune.gin",
          f"--gin.MODEL_DIR='{args.model_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
          "--gin.MIXTURE_OR_TASK_MODULE='prompt_tuning.data.demo'",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 2}", "--gin.INITIAL_CHECKPOINT_PATH=None",
          f"--gin.TRAIN_STEPS={args.steps}", f"--gin.BATCH_SIZE={args.batch_size}",
          f"--gin.PROMPT_LENGTH={PROMPT_LENGTH}", f"--gin.SAVE_PERIOD={args.save_period}",
          f"--gin.KEEP_CHECKPOINTS={args.keep}", f"--gin.EVAL_PERIOD={args.eval_period}",
          f"--gin.EVAL_STEPS={args.eval_steps}", f"--gin.STATS_PERIOD={args.save_period}",
          "--gin.DROPOUT_RATE=0.0"]


def run_train(flags: Sequence[str]) -> int | str | None:
  """`python -m prompt_tuning.train <flags>`, here: its exit status (absl's `app.run` always exits)."""
  saved = sys.argv
  sys.argv = ["prompt_tuning.train", *flags]
  try:
    runpy.run_module("prompt_tuning.train", run_name="__main__", alter_sys=True)
  except SystemExit as e:
    return e.code
  finally:
    sys.argv = saved
  return 0


def check_run(model_dir: epath.Path, steps: int, save_period: int, keep: int, eval_period: int) -> list[str]:
  """What the run left in `model_dir` against what the soak expects; the failures, each one line."""
  failures = []
  saves = sorted({*range(0, steps, save_period), steps})
  kept = sorted(int(p.name.split("_")[1]) for p in model_dir.glob("checkpoint_*")
                if re.fullmatch(r"checkpoint_\d+", p.name))
  if kept != saves[-keep:]:
    failures.append(f"checkpoints kept: {kept}, expected the last {keep} saves {saves[-keep:]}")
  for step in saves:
    export = model_dir / "numpy_checkpoints" / f"checkpoint_{step}" / EXPORT
    if not (export.exists() and (export.parent / (EXPORT + ".npy")).exists()):
      failures.append(f"prompt export of step {step} missing: {export}")
      continue
    with export.open("rb") as f:
      prompt = np.load(f)
    if prompt.shape[0] != PROMPT_LENGTH or not np.isfinite(prompt).all():
      failures.append(f"prompt export of step {step} has shape {prompt.shape} or non-finite values")
  metrics = model_dir / "inference_eval" / f"{TASK}-metrics.jsonl"
  evals = [json.loads(line)["step"] for line in metrics.read_text().splitlines()] if metrics.exists() else []
  expected_evals = sorted({*range(eval_period, steps + 1, eval_period), steps}) if eval_period else []
  if evals != expected_evals:
    failures.append(f"evaluations at steps {evals}, expected {expected_evals}")
  leftovers = [p.name for p in [*model_dir.iterdir(), *(model_dir / "numpy_checkpoints").iterdir()]
               if ".orbax-checkpoint-tmp" in p.name or ".tmp-" in p.name or p.name == "trainer.claim"]
  if leftovers:
    failures.append(f"left behind: {leftovers}")
  return failures


def rss_growth(samples: Sequence[tuple[int, int]], from_step: int) -> dict[str, Any]:
  """Resident memory at the first sample at or after `from_step` against the largest and the last after it."""
  after = [(s, kib) for s, kib in samples if s >= from_step]
  if not after:
    return {"growth": None}
  (base_step, base), peak, last = after[0], max(kib for _, kib in after), after[-1][1]
  return {"base_step": base_step, "base_mib": round(base / 1024, 1), "peak_mib": round(peak / 1024, 1),
          "last_mib": round(last / 1024, 1), "growth": round(peak / base - 1, 4),
          "samples": len(after)}


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model_dir", required=True, help="an absent or empty folder (local or gs://)")
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--save_period", type=int, default=20)
  parser.add_argument("--keep", type=int, default=3)
  parser.add_argument("--eval_period", type=int, default=100)
  parser.add_argument("--eval_steps", type=int, default=20, help="batches of each teacher-forced evaluation")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--rss_from_step", type=int, default=200)
  parser.add_argument("--max_rss_growth", type=float, default=0.05)
  parser.add_argument("--result", default=None, help="also write the result JSON here")
  args = parser.parse_args(argv)
  model_dir = epath.Path(args.model_dir)
  if model_dir.exists() and any(model_dir.iterdir()):
    print(f"error: --model_dir={args.model_dir} is not empty; a soak starts from nothing: give a new folder.",
          file=sys.stderr)
    return 2
  probe = RssProbe()
  logging.getLogger().addHandler(probe)
  start = time.time()
  try:
    code = run_train(train_flags(args))
  finally:
    logging.getLogger().removeHandler(probe)
  failures = [] if code in (0, None) else [f"the train CLI exited with {code!r}"]
  if not failures:
    failures = check_run(model_dir, args.steps, args.save_period, args.keep, args.eval_period)
  memory = rss_growth(probe.samples, args.rss_from_step)
  if memory["growth"] is None:
    failures.append(f"no resident-memory sample at or after step {args.rss_from_step}")
  elif memory["growth"] >= args.max_rss_growth:
    failures.append(f"resident memory grew {memory['growth']:.1%} after step {memory['base_step']} "
                    f"(limit {args.max_rss_growth:.0%})")
  result = {"command": "python -m prompt_tuning.scripts.soak " + " ".join(sys.argv[1:] if argv is None else argv),
            "steps": args.steps, "save_period": args.save_period, "keep": args.keep,
            "eval_period": args.eval_period, "wall_s": round(time.time() - start, 1), "rss": memory,
            "failures": failures, "passed": not failures}
  text = json.dumps(result, indent=1)
  print(text)
  if args.result:
    epath.Path(args.result).write_text(text + "\n")
  return 0 if not failures else 1


if __name__ == "__main__":
  sys.exit(main())
