"""Frozen weights from where users keep them (T5X native, our Orbax runs, Hugging Face T5) into a model tree."""
from __future__ import annotations

import contextlib
import json
import os
import re
import time
from typing import Any, Iterator, Mapping, Sequence

import jax
import numpy as np
from absl import logging
from etils import epath
from flax import traverse_util

from prompt_tuning.errors import UserError
from prompt_tuning.runtime.checkpoints import formats
from prompt_tuning.runtime.checkpoints import hf, hf_llama, shard_reads, zarr_store
from prompt_tuning.runtime.checkpoints.shard_reads import StoredArray
from prompt_tuning.runtime.checkpoints.t5x_native import load_t5x_checkpoint, load_variable

Params = dict[str, Any]


class ParamTreeMismatchError(UserError):
  """The checkpoint's parameter tree does not fit the model's."""


def load_params(path: str, step: int | None = None, dtype: str | None = None,
                lazy: bool = False) -> tuple[Params, int | None]:
  """Parameters (nested numpy dicts, Flaxformer names) and the checkpoint step (None for HF) from `path`.

  With `lazy`, arrays stay in storage where the format allows (`StoredArray` leaves, read shard by shard later).
  """
  fmt, location = formats.resolve_checkpoint(path, step)
  if fmt == formats.T5X:
    ckpt = load_t5x_checkpoint(location, restore_dtype=dtype, include_optimizer_state=False, lazy=lazy)
    step_value = ckpt.get("state", {}).get("step")
    return ckpt["target"], None if step_value is None else int(np.asarray(step_value))
  if fmt == formats.ORBAX:
    from prompt_tuning.runtime.checkpoints.orbax_io import load_orbax_params
    return load_orbax_params(location, dtype, lazy=lazy)
  if fmt == formats.HF:
    return _cast(_load_hf(location, lazy), dtype), None
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
    if _is_llama(location):  # the whole (small to medium) checkpoint is read
      return _variable_at(_load_hf(location), variable_path.removeprefix("target/"), location)
    return hf.load_hf_variable(str(location), variable_path.removeprefix("target/"))
  raise formats.UnknownCheckpointFormatError(epath.Path(path))


def _is_llama(location: epath.Path) -> bool:
  return hf.read_config(location).get("model_type") in hf_llama.SUPPORTED_MODEL_TYPES


def _load_hf(location: epath.Path, lazy: bool = False) -> Params:
  """A Hugging Face folder's parameters: a Llama-family decoder-only model or a T5 (by `model_type`)."""
  if _is_llama(location):
    return hf_llama.load_hf_llama(str(location), lazy=lazy)[0]
  return hf.load_hf_t5(str(location), lazy=lazy)[0]


def _variable_at(params: Params, variable_path: str, location: epath.Path) -> np.ndarray:
  return formats.variable_at(params, variable_path, f"{variable_path!r} is not a parameter of the checkpoint "
                             f"{str(location)!r} (a decoder-only model's paths look like "
                             "'decoder/token_embedder/embedding').")


def _cast(params: Params, dtype: str | None) -> Params:
  if dtype is None:
    return params

  def cast(v: Any) -> Any:
    v = v if isinstance(v, StoredArray) else np.asarray(v)
    return v.astype(dtype) if np.issubdtype(v.dtype, np.floating) else v

  return traverse_util.unflatten_dict({k: cast(v) for k, v in traverse_util.flatten_dict(params).items()})


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
      match = re.fullmatch(pattern, path) or re.fullmatch(pattern, f"target/{path}")  # T5X rules name target/...
      if match:
        used_rules.add(i)
        source = None if repl is None else match.expand(repl).removeprefix("target/")
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
  extra = [p for p in ckpt_flat if p not in taken
           and not any(re.fullmatch(r, p) or re.fullmatch(r, f"target/{p}") for r, _ in assignment_map)]
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


# ------------------------------------------------------------------------------------ a run's frozen weights
# A run's checkpoints hold only what trained (the prompt); this file in MODEL_DIR says where the rest came from,
# so that `CHECKPOINT_PATH=MODEL_DIR/checkpoint_N` evaluates (or seeds a new run) with the right frozen weights.
FROZEN_SOURCE_FILE = "frozen_weights.json"


def write_frozen_source(model_dir: str, path: str, step: int | None,
                        assignment_map: Sequence[tuple[str, str | None]], fallback_to_scratch: bool) -> None:
  """Record (atomically) the checkpoint and mapping a run took its frozen weights from."""
  location = path if "://" in path else os.path.abspath(path)
  record = {"path": location, "step": step, "assignment_map": [list(rule) for rule in assignment_map],
            "fallback_to_scratch": bool(fallback_to_scratch)}
  target = epath.Path(model_dir) / FROZEN_SOURCE_FILE
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = target.parent / f".{FROZEN_SOURCE_FILE}.tmp"
  tmp.write_text(json.dumps(record, indent=1))
  tmp.replace(target)


def _frozen_record(fmt: str, location: epath.Path) -> dict[str, Any] | None:
  record = location.parent / FROZEN_SOURCE_FILE
  return json.loads(record.read_text()) if fmt == formats.ORBAX and record.exists() else None


# Inside `reuse_frozen_base()`: the last frozen base a run checkpoint was restored onto, by what it was built from.
_frozen_base_cache: dict[str, Any] | None = None


@contextlib.contextmanager
def reuse_frozen_base() -> Iterator[None]:
  """Within the block, run checkpoints sharing a frozen-weights record read those frozen weights once.

  For evaluating many checkpoints of one run (eval `mode='all'`): each holds only the trained parameters, and
  the frozen base (gigabytes for XL/XXL) is the same for all. Outside the block nothing is kept, so a training
  run does not hold a host copy of the frozen weights after restoring them.
  """
  global _frozen_base_cache
  _frozen_base_cache = {}
  try:
    yield
  finally:
    _frozen_base_cache = None


def _frozen_base(abstract: Params, source: Mapping[str, Any], dtype: str | None, shardings: Params | None) -> Params:
  build = lambda: restore_params(abstract, source["path"], source.get("step"), dtype,
                                 [tuple(rule) for rule in source["assignment_map"]], source["fallback_to_scratch"],
                                 shardings)[0]
  if _frozen_base_cache is None:
    return build()
  shapes = [(k, tuple(np.shape(v))) for k, v in traverse_util.flatten_dict(abstract, sep="/").items()]
  placement = None if shardings is None else sorted(
      (k, repr(v)) for k, v in traverse_util.flatten_dict(shardings, sep="/").items())
  key = json.dumps([source, dtype, shapes, placement], sort_keys=True, default=str)
  if _frozen_base_cache.get("key") != key:
    _frozen_base_cache.clear()  # keep one base at a time
    _frozen_base_cache.update(key=key, base=build())
  else:
    logging.info("Reusing the frozen weights from %s read for the previous checkpoint.", source["path"])
  return _frozen_base_cache["base"]


def _place_stored(params: Params, abstract: Params, shardings: Params) -> Params:
  """Every `StoredArray` leaf read shard by shard onto its sharding, as the abstract dtype; others left alone."""
  flat = traverse_util.flatten_dict(params, sep="/")
  stored = {k: v for k, v in flat.items() if isinstance(v, StoredArray)}
  if not stored:
    return params
  flat_shardings = traverse_util.flatten_dict(shardings, sep="/")
  flat_abstract = traverse_util.flatten_dict(abstract, sep="/")
  read = lambda: zarr_store.bytes_read() + hf.bytes_read()
  before, start = read(), time.perf_counter()
  flat.update(shard_reads.place(stored, {k: flat_shardings[k] for k in stored},
                                {k: flat_abstract[k].dtype for k in stored}))
  logging.info("Restored %d checkpoint arrays shard by shard in %.1f s; process %d read %.1f MiB from storage "
               "(TensorStore and safetensors reads).", len(stored), time.perf_counter() - start,
               jax.process_index(), (read() - before) / 2**20)
  return traverse_util.unflatten_dict(flat, sep="/")


def restore_params(abstract: Params, path: str, step: int | None = None, dtype: str | None = None,
                   assignment_map: Sequence[tuple[str, str | None]] = (), fallback_to_scratch: bool = False,
                   shardings: Params | None = None) -> tuple[Params, int | None]:
  """`abstract` filled from the checkpoint at `path` (`merge_checkpoint_into`), and the checkpoint's step.

  Given `shardings` (a tree like `abstract`), the checkpoint's values come back as global `jax.Array`s in the
  abstract dtypes, each process having read from storage only the shards its devices hold (where the format
  allows: T5X native, Orbax and Hugging Face safetensors); otherwise as host numpy arrays.

  A run checkpoint of ours that has a frozen-weights record stands for the frozen weights it was trained on
  plus its trained parameters: the recorded checkpoint is merged with the recorded mapping, then every parameter
  the run checkpoint holds replaces its counterpart (`assignment_map` does not apply to them: they are the
  result being restored).
  """
  ckpt, ckpt_step = load_params(path, step, dtype, lazy=shardings is not None)
  fmt, location = formats.resolve_checkpoint(path, step)
  source = _frozen_record(fmt, location)
  if source is None:
    if fmt == formats.ORBAX and "token_embedder" in abstract and "token_embedder" not in ckpt:
      raise ParamTreeMismatchError(
          f"{path!r} is a run checkpoint that holds only the trained parameters "
          f"({_describe(list(traverse_util.flatten_dict(ckpt, sep='/')), limit=3)}) and its run dir has no "
          f"{FROZEN_SOURCE_FILE} naming the frozen weights. Evaluate the pretrained checkpoint with the exported "
          "prompt instead (runs/prompt_eval.gin: CHECKPOINT_PATH=<pretrained>, PROMPT_FILE=<MODEL_DIR>/"
          f"numpy_checkpoints/checkpoint_<step>/...), or write {FROZEN_SOURCE_FILE} with write_frozen_source().")
    merged = merge_checkpoint_into(abstract, ckpt, assignment_map, fallback_to_scratch)
    return (merged if shardings is None else _place_stored(merged, abstract, shardings)), ckpt_step
  flat = dict(traverse_util.flatten_dict(_frozen_base(abstract, source, dtype, shardings), sep="/"))
  for name, value in traverse_util.flatten_dict(ckpt, sep="/").items():
    if name not in flat or tuple(np.shape(flat[name])) != tuple(np.shape(value)):
      raise ParamTreeMismatchError(
          f"{name} {tuple(np.shape(value))} in run checkpoint {path!r} does not fit the model "
          f"({tuple(np.shape(flat[name])) if name in flat else 'no such parameter'}); use the model gin files "
          "the run was trained with.")
    flat[name] = value
  merged = traverse_util.unflatten_dict(flat, sep="/")
  return (merged if shardings is None else _place_stored(merged, abstract, shardings)), ckpt_step
