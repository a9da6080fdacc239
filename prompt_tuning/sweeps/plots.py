"""Scaling plots from the sweep CSVs, in the style of the paper: Figure 1 (score against model parameters, log x,
one line per method, mean and standard deviation over seeds; per evaluation, and on the benchmark score) and
Figure 3 (prompt length and initialiser ablations for prompt tuning)."""
from __future__ import annotations

import collections
import textwrap
from typing import Any, Callable, Mapping, Sequence

import matplotlib
import matplotlib.ticker
import numpy as np

from prompt_tuning.sweeps import report

Row = Mapping[str, Any]


def aggregate(table: Sequence[Row], line: Callable[[Row], Any], value: str = "best"
              ) -> dict[Any, list[tuple[int, float, float, int]]]:
  """{line key: [(num_params, mean, std, seeds)] sorted by size} of `value` over the rows with a line key and
  a value."""
  groups: dict[Any, dict[int, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
  for row in table:
    key = line(row)
    if key is not None and row[value] is not None:
      groups[key][int(row["num_params"])].append(float(row[value]))
  return {k: [(n, float(np.mean(v)), float(np.std(v)), len(v)) for n, v in sorted(by_size.items())]
          for k, by_size in groups.items()}


def param_count(n: int) -> str:
  """14512 -> '15K', 76961152 -> '77M', 11135332352 -> '11B'."""
  for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
    if n >= scale:
      return f"{n / scale:.3g}{unit}"
  return str(n)


def _draw(ax, curves: Mapping[Any, list[tuple[int, float, float, int]]], label: Callable[[Any], str]) -> None:
  for key in sorted(curves, key=str):
    n, mean, std, _ = (np.array(v) for v in zip(*curves[key]))
    line, = ax.plot(n, mean, marker="o", label=label(key))
    ax.fill_between(n, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
  ax.set_xscale("log")
  sizes = sorted({n for points in curves.values() for n, *_ in points})
  ax.set_xticks(sizes, [param_count(n) for n in sizes])  # a tick at each model size
  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.set_xlabel("Model parameters")
  ax.grid(True, which="both", alpha=0.3)


def _tasks(table: Sequence[Row]) -> list[str]:
  return list(dict.fromkeys(r["eval"] for r in table))


def _metric(table: Sequence[Row], task: str) -> str:
  return next(r["metric"] for r in table if r["eval"] == task)


def figure1(table: Sequence[Row], prompt_length: int, prompt_init: str, title: str = ""):
  """Score against parameters per evaluation; prompt tuning at the default length and initialiser."""
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  tasks = _tasks(table)
  fig, axes = plt.subplots(1, len(tasks), figsize=(max(6, 5 * len(tasks)), 4.5), squeeze=False)
  for ax, task in zip(axes[0], tasks):
    def line(row, task=task):
      return report.method_key(row, prompt_length, prompt_init) if row["eval"] == task else None
    _draw(ax, aggregate(table, line), report.label)
    ax.set_ylabel(f"{task} {_metric(table, task)} (best validation)")
    ax.legend()
  fig.suptitle(title or "Score vs. model size", fontsize=11)
  axes[0][0].set_title(f"prompt tuning: length {prompt_length}, {prompt_init} init; mean ± std over seeds",
                       fontsize=9)
  fig.tight_layout()
  return fig


def benchmark_figure(table: Sequence[Row], name: str, prompt_length: int, prompt_init: str, title: str = ""):
  """The paper's Figure 1: the benchmark score against parameters, one line per method (prompt tuning at the
  default length and initialiser), mean ± std over seeds; None without any complete score."""
  if not any(r["score"] is not None for r in table):
    return None
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  _draw(ax, aggregate(table, lambda r: report.method_key(r, prompt_length, prompt_init), value="score"),
        report.label)
  ax.set_ylabel(f"{name} score")
  ax.set_title(title or f"{name} score vs. model size", fontsize=11)
  ax.legend()
  fig.tight_layout()
  return fig


def figure3(table: Sequence[Row], prompt_length: int, prompt_init: str, title: str = ""):
  """Prompt tuning ablations per task: prompt length (at the default init), init (at the default length) and
  the checkpoint it starts from (Figure 3c/d, at both defaults). None when the sweep varied none of them."""
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  pt = [r for r in table if r["method"] == "prompt_tuning"]
  defaults = {"prompt_length": prompt_length, "prompt_init": prompt_init, "checkpoint": None}
  factors = [(vary, {k: v for k, v in defaults.items() if k != vary}, label) for vary, label in
             (("prompt_length", "Prompt length {}"), ("prompt_init", "{} init"), ("checkpoint", "{} checkpoint"))]
  at = lambda row, fixed: all(row.get(k) == v for k, v in fixed.items())
  factors = [f for f in factors if len({r.get(f[0]) for r in pt if at(r, f[1])}) > 1]
  tasks = _tasks(pt)
  if not factors or not tasks:
    return None
  fig, axes = plt.subplots(len(tasks), len(factors), figsize=(5 * len(factors), 4 * len(tasks)), squeeze=False)
  for row_axes, task in zip(axes, tasks):
    for ax, (vary, fixed, label) in zip(row_axes, factors):
      curves = aggregate(pt, lambda r: (r.get(vary) or "default") if r["eval"] == task and at(r, fixed) else None)
      _draw(ax, curves, label.format)
      ax.set_ylabel(f"{task} {_metric(pt, task)}")
      shown = ", ".join(f"{k.replace('_', ' ')} {v or 'default'}" for k, v in fixed.items())
      ax.set_title(textwrap.fill(f"{vary.replace('_', ' ')} ({shown})", 50), fontsize=10)  # fits a 5-inch panel
      ax.legend()
  fig.suptitle(textwrap.fill(title or "Prompt tuning ablations", 55 * len(factors)), fontsize=11)
  fig.tight_layout()
  return fig


def save(fig, path: str) -> None:
  from etils import epath
  epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
  with epath.Path(path).open("wb") as f:
    fig.savefig(f, format="png", dpi=120)
