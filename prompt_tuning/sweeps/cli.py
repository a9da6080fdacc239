r"""Sweeps for the scaling curves (docs/scaling.md).

  python -m prompt_tuning.sweeps run     SPEC [--backend=local|tpu] [--output_dir=DIR] [--jobs=N] [--dry-run]
  python -m prompt_tuning.sweeps collect SPEC [--output_dir=DIR] [--csv=PATH]
  python -m prompt_tuning.sweeps plot    SPEC [--output_dir=DIR] [--csv=PATH] [--png=PATH] [--ablation_png=PATH]
  python -m prompt_tuning.sweeps all     SPEC ...   # run, then collect, then plot

Runs already done (their folder holds sweep_run.json) are skipped, so a sweep resumes where it stopped.
The CSV defaults to OUTPUT_DIR/results.csv and the plots to OUTPUT_DIR/figure1.png and figure3.png.
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
  p.add_argument("--png", default=None, help="Figure 1 style plot.")
  p.add_argument("--ablation_png", default=None, help="Figure 3 style plot (when lengths or inits vary).")
  return p


def run(spec: Spec, args: argparse.Namespace) -> int:
  start = time.time()
  if args.backend == "tpu":
    failed = backends.run_tpu(spec, dry_run=args.dry_run, tpu_name=args.tpu_name)
  else:
    failed = backends.run_local(spec, jobs=args.jobs, dry_run=args.dry_run)
  if not args.dry_run:
    print(f"{len(failed)} failed run(s) in {time.time() - start:.0f}s" + (f": {failed}" if failed else ""))
  return 1 if failed else 0


def collect_results(spec: Spec, csv_path: str) -> int:
  from prompt_tuning.sweeps import collect  # pylint: disable=g-import-not-at-top
  table, missing = collect.rows(spec)
  collect.write_csv(table, csv_path)
  print(f"wrote {len(table)} run(s) to {csv_path}" + (f"; no results yet for {len(missing)}: {missing}"
                                                       if missing else ""))
  return 0


def plot(spec: Spec, csv_path: str, png: str, ablation_png: str) -> int:
  from prompt_tuning.sweeps import collect, plots  # pylint: disable=g-import-not-at-top
  table = collect.read_csv(csv_path)
  if not table:
    print(f"error: {csv_path} has no results to plot.", file=sys.stderr)
    return 1
  length, init = spec.defaults["prompt_length"], spec.defaults["prompt_init"]
  plots.save(plots.figure1(table, length, init, title=spec.name), png)
  print(f"wrote {png}")
  ablation = plots.figure3(table, length, init, title=f"{spec.name}: prompt tuning ablations")
  if ablation is not None:
    plots.save(ablation, ablation_png)
    print(f"wrote {ablation_png}")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  args = parser().parse_args(argv)
  logging.basicConfig(level=logging.WARNING)
  try:
    spec = Spec.load(args.spec, args.output_dir)
  except (SpecError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  csv_path = args.csv or f"{spec.output_dir}/results.csv"
  png = args.png or f"{spec.output_dir}/figure1.png"
  ablation_png = args.ablation_png or f"{spec.output_dir}/figure3.png"
  try:
    code = 0
    if args.command in ("run", "all"):
      code = run(spec, args)
      if args.dry_run:
        return code
    if args.command in ("collect", "all"):
      code = collect_results(spec, csv_path) or code
    if args.command in ("plot", "all"):
      code = plot(spec, csv_path, png, ablation_png) or code
    return code
  except (SpecError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
