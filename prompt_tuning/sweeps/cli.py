r"""Sweeps for the scaling curves and the paper's tables (docs/scaling.md).

  python -m prompt_tuning.sweeps run     SPEC [--backend=local|tpu] [--output_dir=DIR] [--jobs=N] [--dry-run]
  python -m prompt_tuning.sweeps collect SPEC [--output_dir=DIR] [--csv=PATH] [--select_by=EVAL]
                                              [--report=markdown] [--markdown=PATH] [--benchmark_csv=PATH]
  python -m prompt_tuning.sweeps plot    SPEC [--output_dir=DIR] [--csv=PATH] [--png=PATH] [--ablation_png=PATH]
                                              [--benchmark_csv=PATH] [--benchmark_png=PATH]
  python -m prompt_tuning.sweeps all     SPEC ...   # run, then collect, then plot

Runs already done (their folder holds sweep_run.json) are skipped, so a sweep resumes where it stopped.
The CSV defaults to OUTPUT_DIR/results.csv and the plots to OUTPUT_DIR/figure1.png and figure3.png; a spec
with a `benchmark` (e.g. SuperGLUE) also gets OUTPUT_DIR/<benchmark>.csv and <benchmark>.png (the paper's
Figure 1), and `--report=markdown` writes OUTPUT_DIR/results.md and prints it.
`run` needs only the standard library (collect and plot import etils, numpy, matplotlib and, to count
parameters, JAX), so `run --dry-run` prints a sweep's commands anywhere the package is installed.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Sequence

from prompt_tuning.sweeps import backends
from prompt_tuning.sweeps.spec import Spec, SpecError


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m prompt_tuning.sweeps", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  p.add_argument("command", choices=("run", "collect", "plot", "all"))
  p.add_argument("spec", help="The sweep spec (JSON).")
  p.add_argument("--output_dir", default=None, help="Overrides the spec's output_dir.")
  p.add_argument("--backend", choices=("local", "tpu"), default="local")
  p.add_argument("--jobs", type=int, default=1, help="local backend: runs at a time.")
  p.add_argument("--tpu_name", default=None, help="tpu backend: one TPU for every size (else the spec's tpu.tpus).")
  p.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                 help="Print the commands of the runs not done yet, run nothing.")
  p.add_argument("--csv", default=None)
  p.add_argument("--select_by", default=None, metavar="EVAL",
                 help="collect: each run's step is the best of this evaluation (e.g. the in-domain squad), every "
                      "other evaluation is reported at that step (default: each task's select_by, else each "
                      "evaluation's own best).")
  p.add_argument("--report", choices=("csv", "markdown"), default="csv",
                 help="collect: markdown also writes the paper-style tables to --markdown and prints them.")
  p.add_argument("--markdown", default=None, help="Default OUTPUT_DIR/results.md.")
  p.add_argument("--benchmark_csv", default=None, help="The benchmark scores; default OUTPUT_DIR/<benchmark>.csv.")
  p.add_argument("--png", default=None, help="Figure 1 style plot, per evaluation.")
  p.add_argument("--benchmark_png", default=None, help="Figure 1 on the benchmark score; default "
                                                       "OUTPUT_DIR/<benchmark>.png.")
  p.add_argument("--ablation_png", default=None, help="Figure 3 style plot (when lengths or inits vary).")
  return p


def _benchmark_name(spec: Spec) -> str | None:
  return (spec.raw.get("benchmark") or {}).get("name")


def run(spec: Spec, args: argparse.Namespace) -> int:
  start = time.time()
  if args.backend == "tpu":
    failed = backends.run_tpu(spec, dry_run=args.dry_run, tpu_name=args.tpu_name)
  else:
    failed = backends.run_local(spec, jobs=args.jobs, dry_run=args.dry_run)
  if not args.dry_run:
    print(f"{len(failed)} failed run(s) in {time.time() - start:.0f}s" + (f": {failed}" if failed else ""))
  return 1 if failed else 0


def collect_results(spec: Spec, args: argparse.Namespace, paths: dict[str, str]) -> int:
  from prompt_tuning.sweeps import collect, report  # pylint: disable=g-import-not-at-top
  table, missing = collect.rows(spec, select_by=args.select_by)
  collect.write_csv(table, paths["csv"])
  print(f"wrote {len(table)} result(s) to {paths['csv']}" + (f"; no results yet for {len(missing)}: {missing}"
                                                             if missing else ""))
  name = _benchmark_name(spec)
  scores: list = []
  if name:
    scores, incomplete = collect.benchmark(spec, table)
    collect.write_csv(scores, paths["benchmark_csv"], collect.benchmark_columns(spec))
    print(f"wrote {len(scores) - len(incomplete)} {name} score(s) to {paths['benchmark_csv']}"
          + (f"; no score for {len(incomplete)}: {incomplete}" if incomplete else ""))
  if args.report == "markdown":
    text = report.markdown(spec.name, table, spec.defaults["prompt_length"], spec.defaults["prompt_init"],
                           name, scores)
    _write(paths["markdown"], text)
    print(text, end="")
    print(f"wrote {paths['markdown']}")
  return 0


def _write(path: str, text: str) -> None:
  from etils import epath  # pylint: disable=g-import-not-at-top
  epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
  epath.Path(path).write_text(text)


def plot(spec: Spec, paths: dict[str, str]) -> int:
  from etils import epath  # pylint: disable=g-import-not-at-top
  from prompt_tuning.sweeps import collect, plots  # pylint: disable=g-import-not-at-top
  table = collect.read_csv(paths["csv"])
  if not table:
    print(f"error: {paths['csv']} has no results to plot.", file=sys.stderr)
    return 1
  length, init = spec.defaults["prompt_length"], spec.defaults["prompt_init"]
  plots.save(plots.figure1(table, length, init, title=spec.name), paths["png"])
  print(f"wrote {paths['png']}")
  name = _benchmark_name(spec)
  if name and epath.Path(paths["benchmark_csv"]).exists():
    figure = plots.benchmark_figure(collect.read_benchmark_csv(paths["benchmark_csv"]), name, length, init,
                                    title=f"{spec.name}: {name} score")
    if figure is None:
      print(f"no complete {name} score in {paths['benchmark_csv']} to plot yet")
    else:
      plots.save(figure, paths["benchmark_png"])
      print(f"wrote {paths['benchmark_png']}")
  ablation = plots.figure3(table, length, init, title=f"{spec.name}: prompt tuning ablations")
  if ablation is not None:
    plots.save(ablation, paths["ablation_png"])
    print(f"wrote {paths['ablation_png']}")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  args = parser().parse_args(argv)
  logging.basicConfig(level=logging.WARNING)
  try:
    spec = Spec.load(args.spec, args.output_dir)
  except (SpecError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  name = _benchmark_name(spec) or "benchmark"
  paths = {"csv": args.csv or f"{spec.output_dir}/results.csv", "png": args.png or f"{spec.output_dir}/figure1.png",
           "ablation_png": args.ablation_png or f"{spec.output_dir}/figure3.png",
           "markdown": args.markdown or f"{spec.output_dir}/results.md",
           "benchmark_csv": args.benchmark_csv or f"{spec.output_dir}/{name}.csv",
           "benchmark_png": args.benchmark_png or f"{spec.output_dir}/{name}.png"}
  try:
    code = 0
    if args.command in ("run", "all"):
      code = run(spec, args)
      if args.dry_run:
        return code
    if args.command in ("collect", "all"):
      code = collect_results(spec, args, paths) or code
    if args.command in ("plot", "all"):
      code = plot(spec, paths) or code
    return code
  except (SpecError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
