"""Find the steps in a model dir and tell which checkpoint format a path holds."""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np
from etils import epath

from prompt_tuning.errors import UserError

T5X, ORBAX, HF, TF = "t5x", "orbax", "hf", "tf"
FORMATS = {
    T5X: "T5X native: checkpoint_<step>/ with a msgpack 'checkpoint' file and zarr dirs",
    ORBAX: "Orbax: checkpoint_<step>/ with _METADATA or _CHECKPOINT_METADATA",
    HF: "Hugging Face: a dir with config.json and *.safetensors",
    TF: "TensorFlow: a checkpoint prefix with a .index file, or a dir with a 'checkpoint' text file",
}
CHECKPOINT_FILE = "checkpoint"
_STEP_DIR = re.compile(r"checkpoint_(\d+)$")
_ORBAX_MARKERS = ("_METADATA", "_CHECKPOINT_METADATA", "state/_METADATA")
_TF_MAGIC = b"model_checkpoint_path"
_MSGPACK_MAP_PREFIXES = (*range(0x80, 0x90), 0xDE, 0xDF)  # fixmap, map16, map32


class CheckpointNotFoundError(UserError, FileNotFoundError):
  """There is no checkpoint at the given path."""

  def __init__(self, path: epath.PathLike, detail: str = ""):
    self.path = str(path)
    super().__init__(
        f"No checkpoint at {self.path!r}{': ' + detail if detail else ''}. A valid path is a model dir holding "
        "checkpoint_<step>/ dirs, one checkpoint_<step>/ dir, its msgpack 'checkpoint' file, a Hugging Face dir "
        "with config.json and *.safetensors, or a TensorFlow checkpoint prefix (with a .index file).")


class UnknownCheckpointFormatError(UserError):
  """The path exists but holds no checkpoint format we can read."""

  def __init__(self, path: epath.PathLike):
    self.path = str(path)
    understood = "; ".join(f"{name!r} ({what})" for name, what in FORMATS.items())
    super().__init__(f"{self.path!r} is not a checkpoint in any format understood here: {understood}.")


def all_steps(model_dir: epath.PathLike) -> list[int]:
  """Ascending steps of the `checkpoint_<step>` dirs in `model_dir` (unfinished `.tmp-*` dirs are ignored)."""
  model_dir = epath.Path(model_dir)
  if not model_dir.is_dir():
    return []
  matches = (_STEP_DIR.match(child.name) for child in model_dir.iterdir())
  return sorted(int(m.group(1)) for m in matches if m)


def latest_step(model_dir: epath.PathLike) -> int | None:
  """The largest saved step in `model_dir`, or None when there is none."""
  steps = all_steps(model_dir)
  return steps[-1] if steps else None


def checkpoint_dir(model_dir: epath.PathLike, step: int) -> epath.Path:
  """`<model_dir>/checkpoint_<step>` (no zero padding, as T5X)."""
  return epath.Path(model_dir) / f"checkpoint_{int(step)}"


def _step_dir(path: epath.Path, step: int | None) -> epath.Path:
  """Picks the `checkpoint_<step>` dir (the latest when step is None) of a model dir; other dirs pass through."""
  steps = all_steps(path)
  if step is None:
    return checkpoint_dir(path, steps[-1]) if steps else path
  own = _STEP_DIR.match(path.name)
  if own and int(own.group(1)) == step and not steps:
    return path
  if step not in steps:
    raise CheckpointNotFoundError(path, f"there is no checkpoint_{step} (steps found: {steps})")
  return checkpoint_dir(path, step)


def _classify_file(path: epath.Path) -> str:
  if path.name.endswith(".index"):
    return TF
  if (path.parent / "_METADATA").exists():
    return ORBAX
  with path.open("rb") as f:
    head = f.read(len(_TF_MAGIC))
  if head == _TF_MAGIC:
    return TF
  if head[:1] and head[0] in _MSGPACK_MAP_PREFIXES:
    return T5X
  raise UnknownCheckpointFormatError(path)


def _classify_dir(path: epath.Path) -> tuple[str, epath.Path]:
  names = {child.name for child in path.iterdir()}
  if not names:
    raise CheckpointNotFoundError(path, "the dir is empty")
  if any((path / marker).exists() for marker in _ORBAX_MARKERS):
    return ORBAX, path
  for candidate in (path / CHECKPOINT_FILE, path / "state" / CHECKPOINT_FILE):
    if candidate.is_file():
      kind = _classify_file(candidate)
      return kind, candidate if kind == T5X else path
  if "config.json" in names and any(name.endswith(".safetensors") for name in names):
    return HF, path
  if any(name.endswith(".index") for name in names):
    return TF, path
  raise UnknownCheckpointFormatError(path)


def resolve_checkpoint(path: epath.PathLike, step: int | None = None) -> tuple[str, epath.Path]:
  """Returns (format, location); for T5X the location is the msgpack file, otherwise the dir or TF prefix.

  A model dir resolves to its `checkpoint_<step>` dir (the latest unless `step` is given).
  """
  path = epath.Path(path)
  if not path.exists():
    if (path.parent / f"{path.name}.index").exists():
      return TF, path
    raise CheckpointNotFoundError(path)
  if path.is_dir():
    return _classify_dir(_step_dir(path, step))
  if step is not None:
    raise ValueError(f"step={step} only applies to a model dir, but {str(path)!r} is a file; drop the step.")
  return _classify_file(path), path


def detect_checkpoint_format(path: epath.PathLike) -> str:
  """One of 't5x', 'orbax', 'hf' or 'tf' for the checkpoint at `path` (a model dir means its latest step)."""
  return resolve_checkpoint(path)[0]


def variable_at(params: Mapping[str, Any], variable_path: str, not_found: str) -> np.ndarray:
  """The array at `a/b/c` in a nested parameter tree; KeyError `not_found` (naming the path) when absent."""
  value: Any = params
  for key in variable_path.split("/"):
    if not isinstance(value, Mapping) or key not in value:
      raise KeyError(not_found)
    value = value[key]
  return np.asarray(value)
