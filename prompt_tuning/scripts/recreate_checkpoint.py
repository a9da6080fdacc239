r"""Rebuild the run checkpoint of an earlier step from its numpy prompt export (the reference's `recreate_checkpoint`).

  python -m prompt_tuning.scripts.recreate_checkpoint --model_dir=MODEL_DIR --step=1105000 [--output_dir=DIR]

Prompt-tuning runs keep one Orbax checkpoint (`KEEP_CHECKPOINTS=1`) but export the prompt at every save
(`numpy_checkpoints/checkpoint_<step>/`). To evaluate the *best* step as a checkpoint (`runs/eval.gin`,
`CHECKPOINT_PATH=MODEL_DIR/checkpoint_<step>`), this takes the latest checkpoint, replaces each trained parameter
by its export from `--step`, and saves the result as `checkpoint_<step>` (in MODEL_DIR, or `--output_dir`, which
also gets the run's `frozen_weights.json`). As in the reference, only the parameters are rewound: the optimizer
state and the input position are the latest checkpoint's, so do not resume training from it. An existing
`checkpoint_<step>` is never overwritten.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
from typing import Sequence

import numpy as np
from etils import epath
from flax import traverse_util

from prompt_tuning import errors
from prompt_tuning.runtime.checkpoints import formats
from prompt_tuning.runtime.checkpoints.orbax_io import RunCheckpointer
from prompt_tuning.runtime.checkpoints.restore import FROZEN_SOURCE_FILE


def numpy_exports(model_dir: epath.Path, step: int) -> dict[str, np.ndarray]:
  """`numpy_checkpoints/checkpoint_<step>/<dotted.name>.npy` as {'a/b/c': value}."""
  folder = model_dir / "numpy_checkpoints" / f"checkpoint_{step}"
  files = sorted(folder.glob("*.npy"))  # a missing folder globs to nothing
  if not files:
    saved = sorted(p.name for p in folder.parent.glob("checkpoint_*") if "." not in p.name)
    raise FileNotFoundError(f"No numpy export for step {step} in {str(folder)!r}; the run exported: "
                            f"{', '.join(saved) or 'nothing'}. Pick --step among them.")
  return {f.name[:-len(".npy")].replace(".", "/"): np.load(f) for f in files}


def recreate_checkpoint(model_dir: str, step: int, output_dir: str | None = None) -> epath.Path:
  """Save `checkpoint_<step>` holding the latest checkpoint with the trained parameters exported at `step`."""
  source, out = epath.Path(model_dir), epath.Path(output_dir or model_dir)
  latest = formats.latest_step(source)
  if latest is None:
    raise FileNotFoundError(f"No checkpoint_<step> in {model_dir!r}: nothing to rebuild from.")
  if (out / f"checkpoint_{step}").exists():
    raise FileExistsError(f"{str(out / f'checkpoint_{step}')!r} exists already; it is left as it is.")
  exports = numpy_exports(source, step)
  reader = RunCheckpointer(str(source))
  target, opt_state, position = reader.restore_numpy(latest)
  reader.close()
  flat = traverse_util.flatten_dict(target, sep="/")
  for name, value in exports.items():
    if name not in flat or np.shape(flat[name]) != value.shape:
      held = f"{np.shape(flat[name])}" if name in flat else f"no such parameter (it holds {sorted(flat)})"
      raise ValueError(f"The export {name} {value.shape} of step {step} does not fit checkpoint_{latest}: {held}.")
    flat[name] = value.astype(flat[name].dtype)
  logging.info("checkpoint_%d + the step-%d exports of %s -> %s", latest, step, sorted(exports), out)
  same_dir = os.path.abspath(str(out)) == os.path.abspath(str(source))
  writer = RunCheckpointer(str(out), keep=None, export_regexes=() if same_dir else (".*",))
  writer.save(step, traverse_util.unflatten_dict(flat, sep="/"), opt_state, position)
  writer.wait()
  writer.close()
  if not same_dir and (source / FROZEN_SOURCE_FILE).exists():
    shutil.copyfile(source / FROZEN_SOURCE_FILE, out / FROZEN_SOURCE_FILE)
  return out / f"checkpoint_{step}"


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model_dir", required=True, help="the prompt-tuning run's MODEL_DIR")
  parser.add_argument("--step", type=int, required=True, help="a step with a numpy_checkpoints/ export")
  parser.add_argument("--output_dir", default=None, help="where to save checkpoint_<step> (default: MODEL_DIR)")
  args = parser.parse_args(argv)
  with errors.user_errors(FileNotFoundError, FileExistsError, ValueError):
    path = recreate_checkpoint(args.model_dir, args.step, args.output_dir)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
