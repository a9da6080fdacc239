r"""Compare two checkpoints variable by variable (the reference's `diff_checkpoints`).

  python -m prompt_tuning.scripts.diff_checkpoints CKPT_A CKPT_B [--frac=0.1 --seed=0] [--limit_to_params]
    [--compare_step] [--check=target/encoder/prompt/prompt/prompt ...] [--output=a_vs_b.json]

Variables are '/'-joined paths (`target/...`, and for T5X checkpoints the optimizer's `state/...`). Reported per
variable: missing on one side, a shape mismatch, or a value mismatch (`np.isclose`: how many elements differ,
their share and the largest absolute error). `--frac` spot-checks that random share of the shared variables
(plus every `--check`). Exit codes: 0 the same, 1 different, 2 an error (a bad argument or path, an unreadable
checkpoint, a crash: one `error:` line on stderr; `PT_TRACEBACK=1` adds the traceback), so it can gate a script.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import traceback
from typing import Any, Sequence

import numpy as np
from etils import epath
from flax import traverse_util

from prompt_tuning import errors
from prompt_tuning.runtime.checkpoints import formats
from prompt_tuning.runtime.checkpoints.restore import load_params
from prompt_tuning.runtime.checkpoints.t5x_native import load_t5x_checkpoint


def flat_checkpoint(path: str) -> dict[str, np.ndarray]:
  """Every variable of a checkpoint by '/'-joined path: T5X with its optimizer state, others `target/` + step."""
  if formats.detect_checkpoint_format(path) == formats.T5X:
    tree = load_t5x_checkpoint(path)
  else:
    params, step = load_params(path)
    tree = {"target": params, **({"state": {"step": np.asarray(step)}} if step is not None else {})}
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def compare_arrays(a: np.ndarray, b: np.ndarray) -> dict[str, Any] | None:
  """None when equal within `np.isclose`; else what differs."""
  if a.shape != b.shape:
    return {"error_type": "shape", "a_shape": list(a.shape), "b_shape": list(b.shape)}
  if a.dtype == object or b.dtype == object:  # empty optimizer slots (None) and other non-numeric leaves
    return None if a.tolist() == b.tolist() else {"error_type": "value", "a": repr(a.tolist())[:200],
                                                  "b": repr(b.tolist())[:200]}
  a64, b64 = a.astype(np.float64), b.astype(np.float64)
  close = np.isclose(a64, b64, equal_nan=True)
  if close.all():
    return None
  mismatch = int(close.size - close.sum())
  return {"error_type": "value", "match": int(close.sum()), "mismatch": mismatch,
          "percentage": f"{100.0 * mismatch / close.size:.3f}%", "max_error": float(np.max(np.abs(a64 - b64)))}


def diff_checkpoints(path_a: str, path_b: str, frac: float = 1.0, seed: int | None = None,
                     compare_step: bool = False, limit_to_params: bool = False,
                     check: Sequence[str] = ()) -> dict[str, Any]:
  """The report as a JSON-able dict; `report["errors"]` is empty when the checkpoints agree."""
  if not 0.0 < frac <= 1.0:
    raise ValueError(f"--frac={frac} must be in (0, 1].")
  a, b = flat_checkpoint(path_a), flat_checkpoint(path_b)
  for tree in (a, b):
    if limit_to_params:
      for key in [k for k in tree if not k.startswith("target/")]:
        del tree[key]
    if not compare_step:
      tree.pop("state/step", None)
  shared = sorted(set(a) & set(b))
  unknown = [c for c in check if c not in shared]
  if unknown:
    raise ValueError(f"--check {unknown} not in both checkpoints; shared variables look like {shared[:3]}.")
  chosen = set(shared) if frac == 1.0 else set(random.Random(seed).sample(shared, math.floor(len(shared) * frac)))
  chosen |= set(check)
  report: dict[str, Any] = {"ckpt_a": path_a, "ckpt_b": path_b, "check_frac": frac, "parameters": {}, "errors": []}
  only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
  if only_a or only_b:
    report["parameter_mismatch"] = {"present_in_a_not_in_b": only_a, "present_in_b_not_in_a": only_b}
    report["errors"] += [{"error_type": "missing", "parameter": k, "in_a": k in a, "in_b": k in b}
                         for k in only_a + only_b]
  for name in sorted(chosen):
    diff = compare_arrays(a[name], b[name])
    report["parameters"][name] = "Matched!" if diff is None else diff
    if diff is not None:
      report["errors"].append({"parameter": name, **diff})
  return report


SAME, DIFFERENT, ERROR = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])  # its usage errors exit 2 too
  parser.add_argument("ckpt_a")
  parser.add_argument("ckpt_b")
  parser.add_argument("--frac", type=float, default=1.0, help="share of the shared variables to check, (0, 1]")
  parser.add_argument("--seed", type=int, default=None, help="seed of the --frac spot check")
  parser.add_argument("--compare_step", action="store_true", help="also require the same state/step")
  parser.add_argument("--limit_to_params", action="store_true", help="only target/ (skip optimizer state)")
  parser.add_argument("--check", action="append", default=[], help="a variable always checked (repeatable)")
  parser.add_argument("--output", default=None, help="write the report as JSON here")
  args = parser.parse_args(argv)
  try:
    report = diff_checkpoints(args.ckpt_a, args.ckpt_b, args.frac, args.seed, args.compare_step,
                              args.limit_to_params, args.check)
    if args.output:
      out = epath.Path(args.output)
      out.parent.mkdir(parents=True, exist_ok=True)
      out.write_text(json.dumps(report, indent=2))
  except Exception as e:  # pylint: disable=broad-except  # 1 must mean "different", never a crash
    if os.environ.get(errors.TRACEBACK_ENV, "") not in ("", "0"):
      traceback.print_exc()
    print(errors.one_line(f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else e), file=sys.stderr)
    sys.exit(ERROR)
  for error in report["errors"]:
    print(json.dumps(error))
  print(f"{len(report['parameters'])} variables checked, {len(report['errors'])} differences")
  sys.exit(DIFFERENT if report["errors"] else SAME)


if __name__ == "__main__":
  main()
