"""Sweep results from the run folders into CSVs.

Per run and evaluation: the best validation score over its evaluations (the paper's early stopping), the step
it came at and the last score, or, selecting by one evaluation (`select_by`, the paper's protocol for Tables 1
and 2), every evaluation's score at the step where that one was best. A score is the mean of its metrics. Per
(size, method, prompt length, initialiser, seed), a `benchmark` (e.g. SuperGLUE) scores the unweighted mean of
its tasks' scores."""
from __future__ import annotations

import csv
import functools
import json
import logging
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from etils import epath

from prompt_tuning.sweeps.spec import Eval, Run, Spec, SpecError

COLUMNS = ("task", "eval", "size", "num_params", "method", "prompt_length", "prompt_init", "checkpoint", "seed",
           "metric", "best", "best_step", "final", "num_evals", "selected_by", "values", "run_id")
# One benchmark score each; `checkpoint` names a checkpoint variant (Figure 3c/d), empty for the size's own.
GROUP = ("size", "num_params", "method", "prompt_length", "prompt_init", "checkpoint", "seed")
Row = Mapping[str, Any]


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


def scores(lines: Sequence[Mapping[str, Any]], metrics: str | Sequence[str]) -> list[tuple[float, int]]:
  """(score, step) of each line holding every metric; the score is the metrics' mean."""
  metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
  return [(float(np.mean([float(l[m]) for m in metrics])), int(l.get("step", -1)))
          for l in lines if all(m in l for m in metrics)]


def best_of(lines: Sequence[Mapping[str, Any]], metric: str | Sequence[str], higher_is_better: bool = True
            ) -> tuple[float, int, float] | None:
  """(best score, its step, last score) of a metric (or the mean of several) over evaluation lines; None
  without any."""
  scored = scores(lines, metric)
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


def _selector(spec: Spec, run: Run, evals: Sequence[Eval], select_by: str | None) -> str | None:
  """The evaluation that picks the run's step: `select_by` when the run has it, else its task's `select_by`."""
  names = [e.name for e in evals]
  if select_by in names:
    return select_by
  return spec.tasks.get(run.task, {}).get("select_by")


def rows(spec: Spec, runs: Iterable[Run] | None = None, select_by: str | None = None
         ) -> tuple[list[dict[str, Any]], list[str]]:
  """One row per run and evaluation with results; also what has none (`<run_id>`, or `<run_id> (<eval>)` for
  runs with several evaluations).

  Each evaluation's step is its own best, or the step where the run's selecting evaluation (`select_by`, when
  the run has it, else its task's `select_by`) was best."""
  runs = list(runs if runs is not None else spec.runs())
  if select_by is not None and not any(select_by in [e.name for e in spec.evals(r)] for r in runs):
    raise SpecError(f"--select_by={select_by} names no evaluation of the spec's runs; choose from "
                    f"{list(dict.fromkeys(e.name for r in runs for e in spec.evals(r)))}.")
  out, missing = [], []
  for run in runs:
    run_dir = spec.run_dir(run.run_id)
    evals = spec.evals(run)
    lines = {e.name: read_metrics(run_dir, e.task_name) for e in evals}
    selector = _selector(spec, run, evals, select_by)
    step = None
    if selector is not None:
      chosen = next(e for e in evals if e.name == selector)
      result = best_of(lines[selector], chosen.metrics, chosen.higher_is_better)
      if result is None:
        missing.extend(_missing(run, evals, evals))
        continue
      step = result[1]
    for e in evals:
      row = _row(spec, run, e, lines[e.name], step)
      if row is None:
        missing.extend(_missing(run, evals, [e]))
      else:
        out.append({**row, "selected_by": selector or ""})
  return out, missing


def _missing(run: Run, evals: Sequence[Eval], lost: Sequence[Eval]) -> list[str]:
  return [run.run_id] if len(evals) == 1 else [f"{run.run_id} ({e.name})" for e in lost]


def _row(spec: Spec, run: Run, evaluation: Eval, lines: Sequence[Mapping[str, Any]], step: int | None
         ) -> dict[str, Any] | None:
  """The evaluation's row: at its best step, or at `step`; None without a score there."""
  scored = scores(lines, evaluation.metrics)
  result = best_of(lines, evaluation.metrics, evaluation.higher_is_better)
  if result is None:
    return None
  best, best_step, final = result
  if step is not None:
    at = [s for s in scored if s[1] == step]
    if not at:
      return None
    best, best_step = at[-1]
  line = [l for l in lines if int(l.get("step", -1)) == best_step and all(m in l for m in evaluation.metrics)][-1]
  return {"task": run.task, "eval": evaluation.name, "size": run.size, "num_params": num_params(spec, run.size),
          "method": run.method, "prompt_length": run.prompt_length or "", "prompt_init": run.prompt_init or "",
          "checkpoint": run.checkpoint or "", "seed": run.seed, "metric": evaluation.metric, "best": best,
          "best_step": best_step, "final": final, "num_evals": len(scored),
          "values": {m: float(line[m]) for m in evaluation.metrics}, "run_id": run.run_id}


def benchmark(spec: Spec, table: Sequence[Row]) -> tuple[list[dict[str, Any]], list[str]]:
  """Per (size, method, prompt length, initialiser, seed) of `table`: the spec benchmark's score, the mean of
  its tasks' scores; empty where a task is missing (`missing` names them). Also a line per incomplete group."""
  cfg = spec.raw.get("benchmark")
  if not cfg:
    return [], []
  tasks = list(cfg["tasks"])
  groups: dict[tuple, dict[str, float]] = {}
  for row in table:
    if row["eval"] in tasks:
      groups.setdefault(tuple(row[k] for k in GROUP), {})[row["eval"]] = float(row["best"])
  out, incomplete = [], []
  for key, by_task in groups.items():
    lost = [t for t in tasks if t not in by_task]
    group = dict(zip(GROUP, key))
    out.append({**group, "score": None if lost else float(np.mean([by_task[t] for t in tasks])),
                "missing": " ".join(lost), **{t: by_task.get(t) for t in tasks}})
    if lost:
      incomplete.append(f"{group_label(group)} (missing {', '.join(lost)})")
  return out, incomplete


def group_label(row: Row) -> str:
  """e.g. `xl/prompt_tuning-len100-from_class_labels/seed0`, `xl-lm_adapt_10k/...` from a checkpoint variant."""
  prompt = f"-len{row['prompt_length']}-{row['prompt_init']}" if row["prompt_length"] else ""
  size = f"{row['size']}-{row['checkpoint']}" if row.get("checkpoint") else row["size"]
  return f"{size}/{row['method']}{prompt}/seed{row['seed']}"


def benchmark_columns(spec: Spec) -> tuple[str, ...]:
  return (*GROUP, "score", "missing", *spec.raw["benchmark"]["tasks"])


def _cell(value: Any) -> Any:
  if isinstance(value, float):
    return f"{value:.4f}"
  if isinstance(value, dict):
    return json.dumps(value, sort_keys=True)
  return value


def write_csv(table: Sequence[Row], path: str, columns: Sequence[str] = COLUMNS) -> None:
  epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
  with epath.Path(path).open("w") as f:
    writer = csv.DictWriter(f, columns, lineterminator="\n")
    writer.writeheader()
    for row in table:
      writer.writerow({k: _cell(v) for k, v in row.items()})


def _read(path: str) -> list[dict[str, Any]]:
  with epath.Path(path).open() as f:
    table = list(csv.DictReader(f))
  for row in table:
    for key in ("num_params", "seed"):
      row[key] = int(row[key])
    row["prompt_length"] = int(row["prompt_length"]) if row["prompt_length"] else None
    row["prompt_init"] = row["prompt_init"] or None
    row["checkpoint"] = row.get("checkpoint") or None  # CSVs written before checkpoint variants have none
  return table


def read_csv(path: str) -> list[dict[str, Any]]:
  """Rows with numbers parsed (empty prompt length / init for the methods without a prompt); a CSV written
  before runs had several evaluations reads as one evaluation per task."""
  table = _read(path)
  for row in table:
    for key in ("best_step", "num_evals"):
      row[key] = int(row[key])
    for key in ("best", "final"):
      row[key] = float(row[key])
    row["eval"] = row.get("eval") or row["task"]
    row["selected_by"] = row.get("selected_by") or ""
    row["values"] = json.loads(row["values"]) if row.get("values") else {}
  return table


def read_benchmark_csv(path: str) -> list[dict[str, Any]]:
  """Benchmark rows; `score` and each task's a float, or None where missing."""
  table = _read(path)
  for row in table:
    for key in set(row) - set(GROUP) - {"missing"}:
      row[key] = float(row[key]) if row[key] != "" else None
  return table
