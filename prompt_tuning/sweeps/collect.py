"""Sweep results from the run folders into a CSV: per run, the best validation score over its evaluations
(the paper's early stopping), the step it came at, and the last score."""
from __future__ import annotations

import csv
import functools
import json
import logging
from typing import Any, Iterable, Mapping, Sequence

from etils import epath

from prompt_tuning.sweeps.spec import Run, Spec, SpecError

COLUMNS = ("task", "size", "num_params", "method", "prompt_length", "prompt_init", "seed", "metric", "best",
           "best_step", "final", "num_evals", "run_id")


def read_metrics(run_dir: str, task_name: str) -> list[dict[str, Any]]:
  """The lines of `inference_eval/<task>-metrics.jsonl` (or of the folder's only metrics file: prompt design
  names its task `<task>_prompt_design_<k>shot`)."""
  folder = epath.Path(run_dir) / "inference_eval"
  path = folder / f"{task_name}-metrics.jsonl"
  if not path.exists():
    found = sorted(folder.glob("*-metrics.jsonl")) if folder.exists() else []
    if len(found) != 1:
      return []
    path = found[0]
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def best_of(lines: Sequence[Mapping[str, Any]], metric: str, higher_is_better: bool = True
            ) -> tuple[float, int, float] | None:
  """(best score, its step, last score) of a metric over evaluation lines; None without any."""
  scored = [(float(l[metric]), int(l.get("step", -1))) for l in lines if metric in l]
  if not scored:
    return None
  sign = 1.0 if higher_is_better else -1.0
  best, step = max(scored, key=lambda s: (sign * s[0], -s[1]))  # ties: the earliest step
  return best, step, scored[-1][0]


@functools.lru_cache(maxsize=None)
def _count(gin_files: tuple[str, ...], bindings: tuple[str, ...], search_paths: tuple[str, ...]) -> int:
  import gin
  from prompt_tuning import gin_utils
  from prompt_tuning.models import config as t5_config
  from prompt_tuning.models import t5
  gin.clear_config(clear_constants=True)
  logging.disable(logging.ERROR)  # gin logs each search path a file is not in
  try:
    gin_utils.parse_gin(gin_files, bindings, search_paths)
    return t5.num_params(gin.get_configurable(t5_config.T5Config)())
  finally:
    logging.disable(logging.NOTSET)
    gin.clear_config(clear_constants=True)


def num_params(spec: Spec, size: str) -> int:
  """The size's `num_params`, else counted from its model gin files (T5 without a prompt)."""
  given = spec.sizes[size].get("num_params")
  if given:
    return int(given)
  try:
    return _count(*spec.model_gin(size))
  except Exception as e:  # pylint: disable=broad-except
    raise SpecError(f"Cannot count the parameters of size {size!r} from its gin files ({e}); give its "
                    "'num_params' in the spec.") from e


def rows(spec: Spec, runs: Iterable[Run] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
  """One row per run with results; also the ids of runs without any."""
  out, missing = [], []
  for run in runs if runs is not None else spec.runs():
    task = spec.tasks[run.task]
    metric = task["metric"]
    result = best_of(read_metrics(spec.run_dir(run.run_id), task["name"]), metric,
                     task.get("higher_is_better", True))
    if result is None:
      missing.append(run.run_id)
      continue
    best, step, final = result
    out.append({"task": run.task, "size": run.size, "num_params": num_params(spec, run.size),
                "method": run.method, "prompt_length": run.prompt_length or "", "prompt_init": run.prompt_init or "",
                "seed": run.seed, "metric": metric, "best": best, "best_step": step, "final": final,
                "num_evals": len(read_metrics(spec.run_dir(run.run_id), task["name"])), "run_id": run.run_id})
  return out, missing


def write_csv(table: Sequence[Mapping[str, Any]], path: str) -> None:
  epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
  with epath.Path(path).open("w") as f:
    writer = csv.DictWriter(f, COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in table:
      writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})


def read_csv(path: str) -> list[dict[str, Any]]:
  """Rows with numbers parsed (empty prompt length / init for the methods without a prompt)."""
  with epath.Path(path).open() as f:
    table = list(csv.DictReader(f))
  for row in table:
    for key in ("num_params", "seed", "best_step", "num_evals"):
      row[key] = int(row[key])
    for key in ("best", "final"):
      row[key] = float(row[key])
    row["prompt_length"] = int(row["prompt_length"]) if row["prompt_length"] else None
    row["prompt_init"] = row["prompt_init"] or None
  return table
