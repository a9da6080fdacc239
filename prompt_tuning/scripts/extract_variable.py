r"""Save one variable of a checkpoint as a numpy file (the reference's `extract_variable`).

  python -m prompt_tuning.scripts.extract_variable --checkpoint_dir=MODEL_DIR/checkpoint_1100000 \
    --variable_path=target/encoder/prompt/prompt/prompt --output_path=prompt.npy

Any checkpoint `INITIAL_CHECKPOINT_PATH` accepts (T5X native, our Orbax runs, a Hugging Face T5 folder); only the
requested array is read. `--restore_dtype` casts floating-point values (e.g. a bfloat16 T5X checkpoint to
float32, the default).
"""
from __future__ import annotations

import argparse
from typing import Sequence

import numpy as np

from prompt_tuning import errors, prompts
from prompt_tuning.runtime.checkpoints.restore import load_checkpoint_variable

RESTORE_DTYPES = ("float32", "bfloat16")


def extract_variable(checkpoint_dir: str, variable_path: str, output_path: str,
                     restore_dtype: str = "float32") -> np.ndarray:
  """Read `variable_path` ('target/...' or our '/'-joined parameter path) and `np.save` it to `output_path`."""
  if restore_dtype not in RESTORE_DTYPES:
    raise ValueError(f"--restore_dtype={restore_dtype!r} is not one of {RESTORE_DTYPES}.")
  path = variable_path if variable_path.startswith(("target/", "state/")) else f"target/{variable_path}"
  value = np.asarray(load_checkpoint_variable(checkpoint_dir, path))
  if np.issubdtype(value.dtype, np.floating) or value.dtype.name == "bfloat16":
    import ml_dtypes  # pylint: disable=g-import-not-at-top  (jax's dependency; numpy has no bfloat16)
    value = value.astype(ml_dtypes.bfloat16 if restore_dtype == "bfloat16" else np.float32)
  prompts.np_save(output_path, value)
  return value


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint_dir", required=True, help="a checkpoint (or a model dir: its latest step)")
  parser.add_argument("--variable_path", required=True, help="e.g. target/encoder/prompt/prompt/prompt")
  parser.add_argument("--output_path", required=True, help="where to write the .npy")
  parser.add_argument("--restore_dtype", default="float32", choices=RESTORE_DTYPES)
  args = parser.parse_args(argv)
  with errors.user_errors(KeyError, ValueError, FileNotFoundError):
    value = extract_variable(args.checkpoint_dir, args.variable_path, args.output_path, args.restore_dtype)
  print(f"{args.variable_path} {value.shape} {value.dtype} -> {args.output_path}")


if __name__ == "__main__":
  main()
