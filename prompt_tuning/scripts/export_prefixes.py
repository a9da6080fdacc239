r"""Write trained prefix-tuning prefixes in their final form, without the MLP reparameterisation.

  python -m prompt_tuning.scripts.export_prefixes --gin_file=models/t5_1_1_base_prompt.gin \
    --gin_file=families/prefix.gin --gin_file=runs/export_prefixes.gin --gin.PROMPT_LENGTH=10 \
    --gin.NUMPY_CHECKPOINT_DIR="'MODEL_DIR/numpy_checkpoints/checkpoint_1100000'" --gin.PREFIX_OUTPUT_DIR="'prefixes/'"

Pass the model and family gin files (and macros) the run trained with. `NUMPY_CHECKPOINT_DIR` is one of the
run's numpy exports (they hold every trainable array); the output is `<attention>.npy` `[layers, 2, P, heads *
head_dim]` (keys, then values) per prefixed attention, which `deep.PrefixTuning.exported_dir` serves with
`PREFIX_HIDDEN_DIM=0` (see docs/prompt_families.md).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from etils import epath
from flax import traverse_util

from prompt_tuning import cli
from prompt_tuning.gin_utils import ConfigError
from prompt_tuning.families import deep
from prompt_tuning.runtime.models import EncoderDecoderModel


def load_numpy_export(numpy_dir: str) -> dict[str, Any]:
  """The nested parameter tree of a `numpy_checkpoints/checkpoint_<step>` folder (its `.npy` files)."""
  folder = epath.Path(numpy_dir)
  if not folder.is_dir():
    raise ConfigError(f"NUMPY_CHECKPOINT_DIR {numpy_dir!r} is not a folder; pass a run's "
                            "MODEL_DIR/numpy_checkpoints/checkpoint_<step>.")
  flat = {tuple(p.name[:-len(".npy")].split(".")): np.load(p.open("rb")) for p in folder.glob("*.npy")}
  if not flat:
    raise ConfigError(f"NUMPY_CHECKPOINT_DIR {numpy_dir!r} holds no .npy exports.")
  return traverse_util.unflatten_dict(flat)


def export_prefixes(*, model: EncoderDecoderModel, numpy_checkpoint_dir: str, output_dir: str) -> dict[str, str]:
  """Compute the final prefixes of the model's `PrefixTuning` from a numpy export; returns {attention: path}."""
  params = load_numpy_export(numpy_checkpoint_dir)
  stacks = {k: v.get("prefix") for k, v in params.items() if isinstance(v, dict)}
  if not any(stacks.values()):
    raise ConfigError(f"{numpy_checkpoint_dir!r} holds no prefix parameters (<stack>.prefix.*): was the run trained "
                     "with families/prefix.gin?")
  try:
    return deep.export_final_prefixes(model.module, {k: {"prefix": v} for k, v in stacks.items() if v}, output_dir)
  except Exception as e:  # a shape / name mismatch between the gin model and the export
    if "ScopeParamShapeError" in type(e).__name__ or "ScopeParamNotFoundError" in type(e).__name__:
      raise ConfigError(f"The prefixes in {numpy_checkpoint_dir!r} do not match the gin-configured model "
                       f"({e}); pass the model gin files and PROMPT_LENGTH / PREFIX_HIDDEN_DIM the run used.") from e
    raise


def main(argv: Sequence[str]) -> None:
  paths = cli.run_gin_main(argv, export_prefixes)
  for name, path in sorted(paths.items()):
    print(f"{name}: {path}")


if __name__ == "__main__":
  cli.start(main)
