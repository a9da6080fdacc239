r"""Print what a run's evaluations measured: first and best/last value of each metric, per task.

  python -m prompt_tuning.scripts.summarize_run MODEL_DIR [--metric accuracy]

Reads `MODEL_DIR/inference_eval/<task>-metrics.jsonl` (written by seqio's JSONLogger during training).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Sequence

from prompt_tuning import errors


def read_metrics(model_dir: str) -> dict[str, list[dict]]:
  """{task: [{'step': ..., metric: value}, ...]} sorted by step."""
  folder = pathlib.Path(model_dir) / "inference_eval"
  files = sorted(folder.glob("*-metrics.jsonl"))
  if not files:
    raise FileNotFoundError(f"No evaluation results under {folder}: run training with an infer_eval dataset "
                            "(EVAL_PERIOD > 0).")
  out = {}
  for f in files:
    rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    out[f.name[:-len("-metrics.jsonl")]] = sorted(rows, key=lambda r: r["step"])
  return out


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("model_dir")
  parser.add_argument("--metric", default=None, help="only this metric (default: every numeric metric)")
  args = parser.parse_args(argv)
  with errors.user_errors(FileNotFoundError):
    results = read_metrics(args.model_dir)
  for task, rows in results.items():
    names = sorted({k for r in rows for k, v in r.items() if k != "step" and isinstance(v, (int, float))})
    for name in names if args.metric is None else [args.metric]:
      series = [(r["step"], r[name]) for r in rows if name in r]
      if not series:
        continue
      (s0, v0), (s1, v1) = series[0], series[-1]
      best = max(series, key=lambda x: x[1])
      print(f"{task} {name}: before (step {s0}) {v0:.2f} -> after (step {s1}) {v1:.2f}; best {best[1]:.2f} at "
            f"step {best[0]}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
