"""Checks of what a CLI was given, run after gin is parsed and before any work: the values of the macros the run
gin files read, the paths (folders to write, checkpoints and `.npy` files to read) and the task's feature lengths.

Each raises `ConfigError` (a `UserError`: one line, exit code 2) naming the bad value and the fix. A macro bound to
a reference (`@...`, `%gin.REQUIRED`) is left to gin; only literal values are checked here.
"""
from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import tempfile
from typing import Any, Callable, Iterator, Mapping

import gin

from prompt_tuning.gin_utils import ConfigError


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


@dataclasses.dataclass(frozen=True)
class Rule:
  """What a macro's value must be: `test` passes, or it is None where `none_ok`."""

  expect: str  # completes "must be ...", e.g. "a positive integer"
  test: Callable[[Any], bool]
  example: str  # a value to suggest, as a gin literal
  none_ok: bool = False


POSITIVE_INT = dict(expect="a positive integer", test=lambda v: _is_int(v) and v > 0)
NON_NEGATIVE_INT = dict(expect="an integer >= 0", test=lambda v: _is_int(v) and v >= 0)
PROBABILITY = dict(expect="a number in [0, 1)", test=lambda v: _is_number(v) and 0 <= v < 1)
NON_EMPTY_STRING = dict(expect="a non-empty string (with inner quotes: --gin.NAME=\"'value'\")",
                        test=lambda v: isinstance(v, str) and bool(v.strip()))

MACRO_RULES: dict[str, Rule] = {
    "TRAIN_STEPS": Rule(**{**POSITIVE_INT, "expect": "a positive integer (absolute: it counts the initial "
                                                     "checkpoint's steps)"}, example="1000"),
    "TRAIN_STEPS_RELATIVE": Rule(**POSITIVE_INT, example="1000", none_ok=True),
    "BATCH_SIZE": Rule(**POSITIVE_INT, example="32"),
    "PROMPT_LENGTH": Rule(**POSITIVE_INT, example="100"),
    "EVAL_STEPS": Rule(**POSITIVE_INT, example="20"),
    "STATS_PERIOD": Rule(**POSITIVE_INT, example="100"),
    "NUM_PARTITIONS": Rule(**POSITIVE_INT, example="1"),
    "NUM_MICROBATCHES": Rule(**POSITIVE_INT, example="None", none_ok=True),
    "KEEP_CHECKPOINTS": Rule(**{**POSITIVE_INT, "expect": "a positive integer (None keeps every checkpoint)"},
                             example="1", none_ok=True),
    "EVAL_PERIOD": Rule(**{**NON_NEGATIVE_INT, "expect": "an integer >= 0 (0 or None: no evaluation)"},
                        example="1000", none_ok=True),
    "SAVE_PERIOD": Rule(**{**NON_NEGATIVE_INT, "expect": "an integer >= 0 (0 or None: save at the start and "
                                                         "the end only)"}, example="1000", none_ok=True),
    "RANDOM_SEED": Rule(**NON_NEGATIVE_INT, example="0"),
    "SHUFFLE_SEED": Rule(**NON_NEGATIVE_INT, example="0", none_ok=True),
    "LEARNING_RATE": Rule("a positive finite number", lambda v: _is_number(v) and v > 0, example="0.3"),
    "DROPOUT_RATE": Rule(**PROBABILITY, example="0.1"),
    "LABEL_SMOOTHING": Rule(**PROBABILITY, example="0.0"),
    "Z_LOSS": Rule("a finite number >= 0", lambda v: _is_number(v) and v >= 0, example="1e-4"),
    "USE_CACHED_TASKS": Rule("True or False", lambda v: isinstance(v, bool), example="False"),
    "MIXTURE_OR_TASK_NAME": Rule(**NON_EMPTY_STRING, example="'my_task'"),
    "MIXTURE_OR_TASK_MODULE": Rule(**NON_EMPTY_STRING, example="'prompt_tuning.data.tasks'", none_ok=True),
    "PROMPT_TEXT": Rule(**NON_EMPTY_STRING, example="'Classify the sentiment:'"),
    "CLASS_LABELS": Rule(
        "a non-empty list of non-empty label strings, or None for a prompt sampled from the vocabulary "
        "(prompts/from_sampled_vocab.gin does the same)",
        lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(x, str) and x for x in v),
        example="\"['positive', 'negative']\"", none_ok=True),
    "PROMPT_COMBINATION": Rule("one of 'prefix', 'prefix_after_bos', 'suffix_before_eos'",
                               lambda v: v in ("prefix", "prefix_after_bos", "suffix_before_eos"),
                               example="\"'prefix'\""),
    "ACTIVATION_DTYPE": Rule("one of 'float32', 'bfloat16', 'float16'",
                             lambda v: v in ("float32", "bfloat16", "float16"), example="\"'bfloat16'\""),
    "TASK_FEATURE_LENGTHS": Rule(
        "a dict of feature name -> positive integer length",
        lambda v: isinstance(v, Mapping) and len(v) > 0 and all(isinstance(k, str) and _is_int(n) and n > 0
                                                                 for k, n in v.items()),
        example="\"{'inputs': 512, 'targets': 8}\"", none_ok=True),
}
OUTPUT_DIRS = ("MODEL_DIR", "EVAL_OUTPUT_DIR", "INFER_OUTPUT_DIR")
CHECKPOINTS = {"INITIAL_CHECKPOINT_PATH": True, "CHECKPOINT_PATH": False}  # name -> None allowed (from scratch)
NPY_FILES = ("PROMPT_FILE", "EMBEDDING_FILE")


# ------------------------------------------------------------------------------------------------ macro values
_UNSET = object()


def macro_value(name: str) -> Any:
  """The literal a macro is bound to (following macros bound to macros), or `_UNSET` when it is unbound or bound
  to anything else (a configurable, `%gin.REQUIRED`)."""
  seen = set()
  while name not in seen:
    seen.add(name)
    value = gin.config._CONFIG.get((name, "gin.macro"), {}).get("value", _UNSET)  # pylint: disable=protected-access
    if isinstance(value, gin.config.ConfigurableReference):
      if value.configurable.wrapped is gin.config.macro and value.evaluate:
        name = "/".join(value.scopes)
        continue
      return _UNSET
    return value
  return _UNSET


def _describe(value: Any) -> str:
  kind = "" if value is None or _is_number(value) or isinstance(value, bool) else f" ({type(value).__name__})"
  return f"{value!r}{kind}"


def check_macro(name: str, value: Any, rule: Rule) -> None:
  if value is None and rule.none_ok:
    return
  if not rule.test(value):
    raise ConfigError(f"{name}={_describe(value)} must be {rule.expect}; set e.g. --gin.{name}={rule.example}.")


def check_macros() -> None:
  """Every bound macro against its rule, then the paths and files the macros name. With TRAIN_STEPS_RELATIVE
  set, TRAIN_STEPS is not read (the run trains that many steps past where it starts), so any value passes."""
  relative = macro_value("TRAIN_STEPS_RELATIVE") not in (None, _UNSET)
  for name, rule in MACRO_RULES.items():
    value = macro_value(name)
    if value is not _UNSET and not (name == "TRAIN_STEPS" and relative):
      check_macro(name, value, rule)
  for name in OUTPUT_DIRS:
    value = macro_value(name)
    if value is not _UNSET:
      check_output_dir(name, value)
  for name, none_ok in CHECKPOINTS.items():
    value = macro_value(name)
    if value is not _UNSET and not (value is None and none_ok):
      check_checkpoint(name, value)
  for name in NPY_FILES:
    value = macro_value(name)
    if value is not _UNSET:
      check_npy_file(name, value)


# ------------------------------------------------------------------------------------------------------- paths
def _require_path(name: str, value: Any) -> str:
  if not isinstance(value, str) or not value.strip():
    raise ConfigError(f"{name}={_describe(value)} must be a path (a string, with inner quotes: "
                      f"--gin.{name}=\"'/path'\").")
  return value


def _is_remote(path: str) -> bool:
  return "://" in path


def check_output_dir(name: str, value: Any) -> None:
  """A folder the run writes to: a folder or nothing yet (created later), never a file, and writable."""
  path = _require_path(name, value)
  if _is_remote(path):
    return  # buckets: permissions are checked by the first write
  target = pathlib.Path(path)
  if target.exists() and not target.is_dir():
    raise ConfigError(f"{name}={path!r} is a file, not a folder; give a folder path (it is created when missing).")
  existing = target
  while not existing.exists():
    existing = existing.parent
  if not existing.is_dir():
    raise ConfigError(f"{name}={path!r} cannot be created: {str(existing)!r} is a file; give a path under a "
                      "folder.")
  reason = _unwritable(existing)
  if reason:
    where = "" if existing == target else f" (its nearest existing folder {str(existing)!r})"
    raise ConfigError(f"{name}={path!r}{where} is not writable ({reason}); give a folder you can write to, or "
                      "fix its permissions.")


def _unwritable(folder: pathlib.Path) -> str | None:
  """Why a file cannot be created in `folder` (tried for real: permissions, read-only mounts), or None."""
  try:
    fd, probe = tempfile.mkstemp(prefix=".write_check_", dir=folder)
  except OSError as e:
    return e.strerror or type(e).__name__
  os.close(fd)
  os.unlink(probe)
  return None


def check_readable(name: str, path: str) -> None:
  """A local file or folder this user may read (listing a folder, opening a file)."""
  if _is_remote(path):
    return
  target = pathlib.Path(path)
  try:
    if target.is_dir():
      next(iter(os.scandir(target)), None)
    elif target.exists():
      with target.open("rb") as f:
        f.read(1)
  except PermissionError as e:
    raise ConfigError(f"{name}={path!r} cannot be read ({e.strerror}); fix its permissions.") from None
  except OSError as e:  # an I/O error (a failing disk, a special file): not a traceback either
    raise ConfigError(f"{name}={path!r} cannot be read ({e.strerror or e}); point it at a readable copy.") from None


def check_checkpoint(name: str, value: Any) -> None:
  """A checkpoint in a format we read (or a model dir holding them): resolved without reading any weights."""
  from prompt_tuning.runtime.checkpoints import formats  # pylint: disable=g-import-not-at-top
  path = _require_path(name, value)
  check_readable(name, path)
  try:
    formats.resolve_checkpoint(path)
  except formats.CheckpointNotFoundError as e:
    none = " or None to start from scratch" if CHECKPOINTS.get(name) else ""
    raise ConfigError(f"{name}={path!r}: {e} Fix the path{none}.") from None
  except formats.UnknownCheckpointFormatError as e:
    raise ConfigError(f"{name}: {e}") from None


def check_npy_file(name: str, value: Any) -> None:
  """A `.npy` file (read once here: the prompt initialiser reuses it), finite, 2-D; a PROMPT_FILE has
  PROMPT_LENGTH rows."""
  from prompt_tuning import prompts  # pylint: disable=g-import-not-at-top
  path = _require_path(name, value)
  check_readable(name, path)
  array = prompts.np_load(path, name)()
  if array.ndim != 2:
    raise ConfigError(f"{name}={path!r} holds an array of shape {array.shape}; it must be 2-D: [rows, model "
                      "width].")
  length = macro_value("PROMPT_LENGTH")
  if name == "PROMPT_FILE" and _is_int(length) and array.shape[0] != length:
    raise ConfigError(f"{name}={path!r} holds a prompt of shape {array.shape}, which does not fit "
                      f"PROMPT_LENGTH={length}; set --gin.PROMPT_LENGTH={array.shape[0]}.")


# ------------------------------------------------------------------------------------------------------- task
def check_task_feature_lengths() -> None:
  """TASK_FEATURE_LENGTHS names every required feature of MIXTURE_OR_TASK_NAME (when both are literals)."""
  lengths, name = macro_value("TASK_FEATURE_LENGTHS"), macro_value("MIXTURE_OR_TASK_NAME")
  if not isinstance(lengths, Mapping) or not isinstance(name, str):
    return
  module = macro_value("MIXTURE_OR_TASK_MODULE")
  from prompt_tuning.runtime import input_pipeline  # pylint: disable=g-import-not-at-top  # SeqIO
  task = input_pipeline.get_task_or_mixture(name, module if isinstance(module, str) else None)
  features = {k: f for k, f in task.output_features.items() if getattr(f, "required", True)}
  missing = [k for k in features if k not in lengths]
  if missing:
    unknown = [k for k in lengths if k not in task.output_features]
    typo = f" ({unknown} are not features of it)" if unknown else ""
    example = {k: lengths.get(k, 8) for k in features}
    raise ConfigError(f"TASK_FEATURE_LENGTHS={dict(lengths)!r} lacks {missing}, feature(s) of {name!r}{typo}; "
                      f"set e.g. --gin.TASK_FEATURE_LENGTHS=\"{example!r}\".")


# ------------------------------------------------------------------------------------------------ initialiser
def _references(value: Any) -> list[Any]:
  return [v for v in gin.config._iterate_flattened_values(value)  # pylint: disable=protected-access
          if isinstance(v, gin.config.ConfigurableReference)]


def reachable_bindings(macro: str) -> Iterator[tuple[Any, dict[str, Any]]]:
  """(configurable, its bindings) of every configurable that the macro's value refers to, directly or through
  other configurables' bindings and macros (what gin builds when it is evaluated)."""
  config = gin.config._CONFIG  # pylint: disable=protected-access
  stack, seen = [config.get((macro, "gin.macro"), {})], set()
  while stack:
    for ref in _references(stack.pop()):
      if ref.configurable.wrapped is gin.config.macro:
        keys = [("/".join(ref.scopes), "gin.macro")]
      else:
        keys = [("/".join(ref.scopes), ref.configurable.selector), ("", ref.configurable.selector)]
      for key in keys:
        if key in seen:
          continue
        seen.add(key)
        bindings = config.get(key, {})
        if key[1] != "gin.macro":
          yield ref.configurable, bindings
        stack.append(bindings)


def check_initialiser_inputs() -> None:
  """A prompt initialiser that reads the embedding table from a checkpoint needs that checkpoint: refused here when
  it is None, instead of when the model is first built."""
  from prompt_tuning import prompts  # pylint: disable=g-import-not-at-top
  for configurable, bindings in reachable_bindings("PROMPT_INIT"):
    if configurable.wrapped is not prompts.t5x_load or "checkpoint_path" not in bindings:
      continue
    path = bindings["checkpoint_path"]
    refs = _references(path)
    if refs and refs[0].configurable.wrapped is gin.config.macro:
      path = macro_value("/".join(refs[0].scopes))
    if path is None:
      prompts.t5x_load(None)  # raises the error that names the fix


def check_config() -> None:
  """Everything above, for the parsed gin config."""
  check_macros()
  check_task_feature_lengths()
  check_initialiser_inputs()
