r"""Few-shot sweeps: per task, size, method and k (examples per class), the mean and spread over subset seeds.

  python -m prompt_tuning.sweeps.few_shot SPEC [--output_dir=DIR] [--csv=PATH] [--markdown=PATH] [--png=PATH]

A few-shot spec (e.g. specs/micro_few_shot.json, specs/few_shot.json) lists each k as a task of its own, with the
same SeqIO `name` and the bindings `FEW_SHOT_K` (absent: the whole training split) and
`FEW_SHOT_SEED = '%RANDOM_SEED'` (each seed of the grid draws its own subset). This reads the runs' results
(`collect.rows`) and reports, per (task, size, method, k), the mean ± standard deviation over seeds of the final
validation score (no early stopping on the full validation set, which a few-shot learner would not have) and of
the best one. Defaults: OUTPUT_DIR/few_shot.csv, few_shot.md, few_shot.png.
"""
from __future__ import annotations

import argparse
import collections
import csv
import math
import sys
from typing import Any, Mapping, Sequence

import numpy as np
from etils import epath

from prompt_tuning.sweeps import collect
from prompt_tuning.sweeps.spec import Spec, SpecError

ALL = "all"
COLUMNS = ("task", "size", "method", "k", "seeds", "final_mean", "final_std", "best_mean", "best_std")


def k_of(spec: Spec, name: str) -> int | str:
  """The spec task's FEW_SHOT_K, or 'all' without one."""
  k = spec.tasks[name].get("bindings", {}).get("FEW_SHOT_K")
  return ALL if k is None else int(k)


def summarise(spec: Spec, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """One row per (SeqIO task, size, method, k) with its seeds' mean and standard deviation (ddof 1)."""
  groups: dict[tuple, list[Mapping[str, Any]]] = collections.defaultdict(list)
  for row in rows:
    name = row["task"]
    if name not in spec.tasks:
      continue
    groups[(spec.tasks[name]["name"], row["size"], row["method"], k_of(spec, name))].append(row)
  order = {k: i for i, k in enumerate(spec.tasks)}
  out = []
  for (task, size, method, k), members in groups.items():
    final = [float(r["final"]) for r in members]
    best = [float(r["best"]) for r in members]
    spread = lambda xs: float(np.std(xs, ddof=1)) if len(xs) > 1 else math.nan
    out.append({"task": task, "size": size, "method": method, "k": k, "seeds": len(members),
                "final_mean": float(np.mean(final)), "final_std": spread(final),
                "best_mean": float(np.mean(best)), "best_std": spread(best),
                "_order": min(order[r["task"]] for r in members)})
  out.sort(key=lambda r: (r["task"], r["size"], r["method"], r["_order"]))
  for r in out:
    del r["_order"]
  return out


def _cell(mean: float, std: float) -> str:
  return f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def markdown(summary: Sequence[Mapping[str, Any]]) -> str:
  """Per task and size: methods as rows, k as columns, final (best) score mean ± std over seeds."""
  lines = []
  for (task, size) in dict.fromkeys((r["task"], r["size"]) for r in summary):
    part = [r for r in summary if r["task"] == task and r["size"] == size]
    ks = list(dict.fromkeys(r["k"] for r in part))
    lines += [f"### {task}, size {size}", "",
              "| method | " + " | ".join(f"k = {k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for method in dict.fromkeys(r["method"] for r in part):
      cells = []
      for k in ks:
        match = [r for r in part if r["method"] == method and r["k"] == k]
        cells.append("—" if not match else f"{_cell(match[0]['final_mean'], match[0]['final_std'])} "
                                           f"({_cell(match[0]['best_mean'], match[0]['best_std'])})")
      lines.append(f"| {method} | " + " | ".join(cells) + " |")
    seeds = sorted({r["seeds"] for r in part})
    lines += ["", f"Final validation score, mean ± std over {'/'.join(map(str, seeds))} subset seeds; in brackets "
              "the best over the run's evaluations. k: training examples per class.", ""]
  return "\n".join(lines)


def plot(summary: Sequence[Mapping[str, Any]], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  panels = list(dict.fromkeys((r["task"], r["size"]) for r in summary))
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
  for ax, (task, size) in zip(axes[0], panels):
    part = [r for r in summary if r["task"] == task and r["size"] == size]
    ks = list(dict.fromkeys(r["k"] for r in part))
    for method in dict.fromkeys(r["method"] for r in part):
      points = [(ks.index(r["k"]), r["final_mean"], 0.0 if math.isnan(r["final_std"]) else r["final_std"])
                for r in part if r["method"] == method]
      x, y, e = zip(*points)
      ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=method)
    ax.set_xticks(range(len(ks)), [str(k) for k in ks])
    ax.set_xlabel("training examples per class (k)")
    ax.set_ylabel("final validation score")
    ax.set_title(f"{task} ({size})")
    ax.legend(fontsize=8)
  fig.tight_layout()
  out = epath.Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  with out.open("wb") as f:
    fig.savefig(f, format="png", dpi=110)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m prompt_tuning.sweeps.few_shot", description=__doc__.split("\n\n")[0])
  p.add_argument("spec")
  p.add_argument("--output_dir", default=None)
  p.add_argument("--csv", default=None)
  p.add_argument("--markdown", default=None)
  p.add_argument("--png", default=None)
  args = p.parse_args(argv)
  try:
    spec = Spec.load(args.spec, args.output_dir)
  except SpecError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  rows, missing = collect.rows(spec)
  if missing:
    print(f"no results yet for {len(missing)} run(s): {missing}", file=sys.stderr)
  summary = summarise(spec, rows)
  paths = {k: getattr(args, k) or f"{spec.output_dir}/few_shot.{ext}"
           for k, ext in (("csv", "csv"), ("markdown", "md"), ("png", "png"))}
  epath.Path(paths["csv"]).parent.mkdir(parents=True, exist_ok=True)
  with epath.Path(paths["csv"]).open("w") as f:
    writer = csv.DictWriter(f, COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in summary:
      writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) and not math.isnan(v) else
                           "" if isinstance(v, float) else v) for k, v in r.items()})
  text = markdown(summary)
  epath.Path(paths["markdown"]).write_text(text)
  if summary:
    plot(summary, paths["png"])
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
