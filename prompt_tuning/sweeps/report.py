"""Sweep results as Markdown tables in the paper's layout: per evaluation (rows: size, training task,
evaluation, metric; columns: methods) and per benchmark score (rows: sizes), each cell the mean ± standard
deviation over seeds. Standard library and numpy only."""
from __future__ import annotations

import collections
from typing import Any, Mapping, Sequence

import numpy as np

from prompt_tuning.sweeps.spec import ENSEMBLE, MIXTURE, PROMPTED

BEST_SEED = "prompt_tuning (best seed)"  # Table 3: the best single prompt next to their ensemble
LABELS = {"model_tuning": "Model Tuning", "prompt_tuning": "Prompt Tuning", "prompt_design": "Prompt Design",
          "multi_task_model_tuning": "Model Tuning (Multi-task)", "prompt_ensemble": "Prompt Ensemble",
          BEST_SEED: "Prompt Tuning (best seed)", "factorised_prompts": "Factorised Prompts (language × task)"}
Row = Mapping[str, Any]


def label(method: str) -> str:
  return LABELS.get(method, method)


def method_key(row: Row, prompt_length: int, prompt_init: str) -> str | None:
  """The row's method; None for prompts at other than the default length and initialiser, and for runs from a
  checkpoint variant (Figure 3's)."""
  if row.get("checkpoint"):
    return None
  if row["method"] in PROMPTED and (row["prompt_length"], row["prompt_init"]) != (prompt_length, prompt_init):
    return None
  return row["method"]


def mean_std(values: Sequence[float]) -> str:
  return f"{np.mean(values):.1f} ± {np.std(values):.1f}" if values else "–"


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
  return ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|",
          *("| " + " | ".join(line) + " |" for line in body)]


def _size_order(table: Sequence[Row]) -> list[str]:
  return [s for s, _ in sorted(dict.fromkeys((r["size"], int(r["num_params"])) for r in table),
                               key=lambda s: s[1])]


def _metric_values(row: Row) -> dict[str, float]:
  return {m: float(v) for m, v in (row["values"] or {row["metric"]: row["best"]}).items()}


def evaluations(table: Sequence[Row], prompt_length: int, prompt_init: str) -> list[str]:
  """Rows (size, training task, evaluation, metric) by methods; a multi-task run counts as trained on each
  task it is evaluated on. With a prompt ensemble, the best prompt tuning seed (by the evaluation's score)
  gets a column too."""
  cells: dict[tuple, dict[str, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
  best: dict[tuple, Row] = {}
  for row in table:
    method = method_key(row, prompt_length, prompt_init)
    if method is None:
      continue
    key = (row["size"], row["eval"] if row["task"] == MIXTURE else row["task"], row["eval"])
    for metric, value in _metric_values(row).items():
      cells[(*key, metric)][method].append(value)
    if method == "prompt_tuning" and (key not in best or row["best"] > best[key]["best"]):
      best[key] = row
  methods = list(dict.fromkeys(m for by_method in cells.values() for m in by_method))
  if ENSEMBLE in methods and "prompt_tuning" in methods:
    methods.insert(methods.index("prompt_tuning") + 1, BEST_SEED)
    for key, row in best.items():
      for metric, value in _metric_values(row).items():
        cells[(*key, metric)][BEST_SEED].append(value)
  sizes = _size_order(table)
  keys = sorted(cells, key=lambda k: sizes.index(k[0]))  # stable: the spec's order within a size
  show_train = any(k[1] != k[2] for k in keys)
  header = ["size", *(["train"] if show_train else []), "eval", "metric", *(label(m) for m in methods)]
  body = []
  for key in keys:
    values = cells[key]
    line = [key[0], *([key[1]] if show_train else []), key[2], key[3]]
    for method in methods:
      one = method == BEST_SEED and values[method]
      line.append(f"{values[method][0]:.1f}" if one else mean_std(values[method]))
    body.append(line)
  return _table(header, body)


def benchmark(rows: Sequence[Row], prompt_length: int, prompt_init: str) -> list[str]:
  """Rows: sizes; columns: methods; cells: the complete scores' mean ± std over seeds (`–` without one)."""
  cells: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
  for row in rows:
    method = method_key(row, prompt_length, prompt_init)
    if method is not None:
      scores = cells[row["size"]][method]  # a column even without a complete score
      if row["score"] is not None:
        scores.append(float(row["score"]))
  methods = list(dict.fromkeys(m for by_method in cells.values() for m in by_method))
  body = [[size, *(mean_std(cells[size][m]) for m in methods)] for size in _size_order(rows) if size in cells]
  return _table(["size", *(label(m) for m in methods)], body)


def markdown(title: str, table: Sequence[Row], prompt_length: int, prompt_init: str,
             benchmark_name: str | None = None, benchmark_rows: Sequence[Row] = ()) -> str:
  """The whole report: the benchmark score (when the spec has one), then every evaluation."""
  lines = [f"# {title}", "", f"Mean ± standard deviation over seeds; prompts of length {prompt_length}, "
           f"{prompt_init} initialisation."]
  selected = sorted({r["selected_by"] for r in table if r.get("selected_by")})
  if selected:
    lines.append(f"Each run's step is the one with the best validation {' / '.join(selected)} score (its "
                 "in-domain evaluation); the others are reported at that step.")
  else:
    lines.append("Each evaluation at its best validation step.")
  if benchmark_name:
    lines += ["", f"## {benchmark_name} score", "", *benchmark(benchmark_rows, prompt_length, prompt_init)]
  lines += ["", "## Evaluations", "", *evaluations(table, prompt_length, prompt_init)]
  return "\n".join(lines) + "\n"
