"""Frozen weights from where users keep them (T5X native, our Orbax runs, Hugging Face T5) into a model tree."""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np
from etils import epath
from flax import traverse_util

from prompt_tuning.runtime.checkpoints import formats
from prompt_tuning.runtime.checkpoints.t5x_native import load_t5x_checkpoint, load_variable

Params = dict[str, Any]


class ParamTreeMismatchError(ValueError):
  """The checkpoint's parameter tree does not fit the model's."""


def load_params(path: str, step: int | None = None, dtype: str | None = None) -> tuple[Params, int | None]:
  """Parameters (nested numpy dicts, Flaxformer names) and the checkpoint step (None for HF) from `path`."""
  fmt, location = formats.resolve_checkpoint(path, step)
  if fmt == formats.T5X:
    ckpt = load_t5x_checkpoint(location, restore_dtype=dtype, include_optimizer_state=False)
    step_value = ckpt.get("state", {}).get("step")
    return ckpt["target"], None if step_value is None else int(np.asarray(step_value))
  if fmt == formats.ORBAX:
    from prompt_tuning.runtime.checkpoints.orbax_io import load_orbax_params
    return load_orbax_params(location, dtype)
  if fmt == formats.HF:
    from prompt_tuning.runtime.checkpoints.hf import load_hf_t5
    params, _ = load_hf_t5(str(location))
    return _cast(params, dtype), None
  raise formats.UnknownCheckpointFormatError(epath.Path(path))


def load_checkpoint_variable(path: str, variable_path: str = "token_embedder/embedding") -> np.ndarray:
  """One variable of a checkpoint of any supported format, reading only that array where the format allows."""
  fmt, location = formats.resolve_checkpoint(path, None)
  if fmt == formats.T5X:
    return load_variable(location, variable_path)
  if fmt == formats.ORBAX:
    from prompt_tuning.runtime.checkpoints.orbax_io import load_orbax_variable
    return load_orbax_variable(location, variable_path)
  if fmt == formats.HF:
    from prompt_tuning.runtime.checkpoints.hf import load_hf_variable
    return load_hf_variable(str(location), variable_path.removeprefix("target/"))
  raise formats.UnknownCheckpointFormatError(epath.Path(path))


def _cast(params: Params, dtype: str | None) -> Params:
  if dtype is None:
    return params
  return traverse_util.unflatten_dict({k: np.asarray(v).astype(dtype) if np.issubdtype(np.asarray(v).dtype,
                                                                                        np.floating) else v
                                       for k, v in traverse_util.flatten_dict(params).items()})


def _describe(paths: Sequence[str], limit: int = 8) -> str:
  shown = ", ".join(sorted(paths)[:limit])
  return shown + (f", ... ({len(paths)} in all)" if len(paths) > limit else "")


def merge_checkpoint_into(model_params: Mapping[str, Any], ckpt_params: Mapping[str, Any],
                          assignment_map: Sequence[tuple[str, str | None]] = (),
                          fallback_to_scratch: bool = False, strict: bool = True) -> Params:
  """Fill the model's tree from the checkpoint, T5X style.

  `assignment_map` rules `(regex, replacement)` fullmatch '/'-joined model paths: None keeps the model's own
  (fresh) value; a replacement string names the checkpoint path (with regex groups). Every rule must match
  something. Missing checkpoint values raise unless `fallback_to_scratch`; with `strict`, checkpoint values the
  model has no place for raise too. Shapes must agree.
  """
  model_flat = traverse_util.flatten_dict(dict(model_params), sep="/")
  ckpt_flat = traverse_util.flatten_dict(dict(ckpt_params), sep="/")
  used_rules: set[int] = set()
  taken: set[str] = set()
  out, missing, bad_shapes = {}, [], []
  for path, value in model_flat.items():
    source = path
    for i, (pattern, repl) in enumerate(assignment_map):
      match = re.fullmatch(pattern, path)
      if match:
        used_rules.add(i)
        source = None if repl is None else match.expand(repl)
        break
    if source is None:
      out[path] = value
      continue
    if source not in ckpt_flat:
      if fallback_to_scratch:
        out[path] = value
      else:
        missing.append(path)
      continue
    taken.add(source)
    got = ckpt_flat[source]
    if tuple(np.shape(got)) != tuple(np.shape(value)):
      bad_shapes.append(f"{path}: checkpoint {tuple(np.shape(got))} vs model {tuple(np.shape(value))}")
      continue
    out[path] = got
  unused = [p for i, (p, _) in enumerate(assignment_map) if i not in used_rules]
  extra = [p for p in ckpt_flat if p not in taken and not any(re.fullmatch(r, p) for r, _ in assignment_map)]
  problems = []
  if unused:
    problems.append(f"assignment_map rules matched no model parameter: {unused}")
  if missing:
    problems.append(f"missing from the checkpoint: {_describe(missing)} (set fallback_to_scratch=True, or add "
                    "an assignment_map rule with None to keep their initial values)")
  if strict and extra:
    problems.append(f"in the checkpoint but not in the model: {_describe(extra)} (check the model size/config "
                    "matches the checkpoint)")
  if bad_shapes:
    problems.append("shape mismatch: " + "; ".join(bad_shapes[:8]) +
                    " (the model config does not match the checkpoint; pick the right size gin file)")
  if problems:
    raise ParamTreeMismatchError("Checkpoint does not fit the model: " + " | ".join(problems))
  return traverse_util.unflatten_dict(out, sep="/")
