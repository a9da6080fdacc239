"""Read and write T5X native checkpoints: a msgpack `checkpoint` file plus zarr dirs.

The msgpack file holds `{'version': 3, 'optimizer': {'target': params, 'state': {'step', 'param_states'}}}`
(flax encoding). Each leaf is either inline (an array, scalar or None) or a tensorstore spec dict pointing at a
zarr array in the same dir, named by the dotted leaf path (`target.encoder.layers_0...`). The zarr arrays are read
and written with TensorStore (`zarr_store`), the msgpack file through `etils.epath`, so `gs://` paths work. With
`lazy=True` the zarr leaves come back as `shard_reads.StoredArray`s, read later region by region.
"""
from __future__ import annotations

import concurrent.futures
import re
import time
from typing import Any, Callable, Mapping, Sequence

from absl import logging
from etils import epath
from flax import serialization
import numpy as np

from prompt_tuning.runtime.checkpoints import formats
from prompt_tuning.runtime.checkpoints import zarr_store
from prompt_tuning.runtime.checkpoints.shard_reads import StoredArray

VERSION = 3
DUMMY_BUCKET = "t5x-dummy-bucket"  # T5X writes this bucket and substitutes the real one when reading.
PLACEHOLDER_PREFIX = "PLACEHOLDER://"  # Old Orbax/T5X hybrid leaves: 'PLACEHOLDER://<zarr dir name>'.
IO_THREADS = 16
SAVE_DTYPES = ("float32", "bfloat16", None)
PINNED_FILE = "PINNED"
_SPEC_KEYS = frozenset({"driver", "kvstore", "metadata"})
_STATE_ROOTS = ("target", "state", "flax_mutables")
_KVSTORE_DRIVERS = ("file", "gfile", "gcs")
_UINT16_ADVICE = ("{name} is stored as uint16, the encoding of bfloat16 before checkpoint version 3. "
                  "Please update saved types to bfloat16: re-save the checkpoint with a current T5X.")

PyTree = Any


def is_tensorstore_spec(x: Any) -> bool:
  """True for the spec dicts that stand in for zarr-stored arrays (keys include driver, kvstore, metadata)."""
  return isinstance(x, Mapping) and _SPEC_KEYS <= x.keys()


def _map_leaves(fn: Callable[[tuple[str, ...], Any], Any], tree: PyTree, path: tuple[str, ...] = ()) -> PyTree:
  """Rebuilds the nested dicts of `tree` with fn(path, leaf) at each leaf; spec dicts and None are leaves."""
  if isinstance(tree, Mapping) and not is_tensorstore_spec(tree):
    return {str(k): _map_leaves(fn, v, (*path, str(k))) for k, v in tree.items()}
  return fn(path, tree)


def _parallel_map(fn: Callable[[tuple[str, ...], Any], Any], tree: PyTree,
                  selected: Callable[[tuple[str, ...], Any], bool]) -> PyTree:
  """Like `_map_leaves`, calling fn (an I/O task) on the selected leaves in threads; others pass through."""
  with concurrent.futures.ThreadPoolExecutor(IO_THREADS) as pool:
    pending = _map_leaves(lambda p, x: pool.submit(fn, p, x) if selected(p, x) else x, tree)
  return _map_leaves(lambda p, x: x.result() if isinstance(x, concurrent.futures.Future) else x, pending)


def _is_floating(dtype: np.dtype) -> bool:
  return np.issubdtype(dtype, np.floating) or (zarr_store.is_ml_dtype(dtype) and "float" in dtype.name)


def _floating_dtype(dtype: Any, arg: str) -> np.dtype | None:
  if dtype is None:
    return None
  parsed = zarr_store.numpy_dtype(dtype)
  if not _is_floating(parsed):
    raise ValueError(f"{arg}={dtype!r} must be a floating dtype such as 'float32', 'bfloat16' or 'float16'.")
  return parsed


def _cast_floats(tree: PyTree, dtype: np.dtype | None) -> PyTree:
  """Casts floating array leaves to dtype (ints, None and Python scalars are left alone)."""
  if dtype is None:
    return tree
  return _map_leaves(
      lambda p, x: x.astype(dtype) if isinstance(x, (np.ndarray, np.generic, StoredArray)) and _is_floating(x.dtype)
      else x, tree)


# ----------------------------------------------------------------------------------------------------- reading


def resolve_tensorstore_path(spec: Mapping[str, Any], checkpoint_dir: epath.PathLike) -> str:
  """Absolute location of the zarr array a spec leaf points at.

  T5X stores the path relative to the checkpoint dir, under a 'file', 'gfile' or 'gcs' kvstore (the latter with
  a placeholder bucket), so the real location is always the checkpoint dir joined with that path: in the
  checkpoint's own bucket for a `gs://` dir, on local disk otherwise. Very old specs keep `path` at the top level.
  """
  kvstore = spec.get("kvstore")
  driver = kvstore.get("driver") if isinstance(kvstore, Mapping) else None
  if driver not in _KVSTORE_DRIVERS:
    raise ValueError(f"Tensorstore spec {dict(spec)} has kvstore driver {driver!r}; supported: {_KVSTORE_DRIVERS}.")
  relative = kvstore.get("path", spec.get("path"))
  if not relative:
    raise ValueError(f"Tensorstore spec {dict(spec)} has no 'path' in its kvstore or at its top level.")
  relative = relative.rstrip("/")
  if "://" in relative:
    return relative
  base = str(checkpoint_dir).rstrip("/")
  if relative.startswith("/"):  # Absolute: stays on the filesystem (and bucket) of the checkpoint.
    root = re.match(r"[a-z][a-z0-9+.-]*://[^/]*", base)
    return (root.group(0) if root else "") + relative
  return f"{base}/{relative}"


def _stored_apart(leaf: Any) -> bool:
  return is_tensorstore_spec(leaf) or (isinstance(leaf, str) and leaf.startswith(PLACEHOLDER_PREFIX))


def _open_leaf(path: tuple[str, ...], leaf: Any, checkpoint_dir: epath.Path) -> StoredArray:
  """The zarr array behind a spec or placeholder leaf, checked against the spec; only its metadata is read."""
  name = "/".join(path)
  expected_shape = None
  if is_tensorstore_spec(leaf):
    if leaf.get("driver") != "zarr":
      raise ValueError(f"{name}: tensorstore driver {leaf.get('driver')!r} is not supported; T5X writes 'zarr'.")
    if leaf.get("dtype") == "uint16" or leaf["metadata"].get("dtype") == "<u2":
      raise ValueError(_UINT16_ADVICE.format(name=name))
    location = resolve_tensorstore_path(leaf, checkpoint_dir)
    expected_shape = leaf["metadata"].get("shape")
  else:
    location = str(checkpoint_dir / leaf[len(PLACEHOLDER_PREFIX):])
  stored = zarr_store.stored_array(zarr_store.open_array(location), name)
  if stored.dtype == np.uint16:
    raise ValueError(_UINT16_ADVICE.format(name=name))
  if expected_shape is not None and tuple(expected_shape) != stored.shape:
    raise ValueError(f"{name}: the zarr array at {location} has shape {stored.shape}, but the checkpoint's spec "
                     f"says {tuple(expected_shape)}; the checkpoint is inconsistent.")
  return stored


def _read_leaf(path: tuple[str, ...], leaf: Any, checkpoint_dir: epath.Path, lazy: bool) -> np.ndarray | StoredArray:
  stored = _open_leaf(path, leaf, checkpoint_dir)
  return stored if lazy else stored.read()


def _find_msgpack(path: epath.PathLike, step: int | None) -> epath.Path:
  kind, location = formats.resolve_checkpoint(path, step)
  if kind != formats.T5X:
    raise ValueError(f"{str(path)!r} holds a {kind!r} checkpoint ({formats.FORMATS[kind]}), not a T5X native one.")
  return location


def _read_train_state(msgpack_file: epath.Path) -> dict[str, Any]:
  """The `{'target', 'state', ...}` dict of the msgpack file, with zarr leaves still as specs."""
  contents = serialization.msgpack_restore(msgpack_file.read_bytes())
  if not isinstance(contents, dict):
    raise ValueError(f"{msgpack_file} holds a {type(contents).__name__}, not a dict; it is not a T5X checkpoint.")
  version = contents.get("version", 0)
  if version == 0:  # A plain flax state dict, or the old Orbax/T5X hybrid under '_optimizer'.
    state = contents.get("_optimizer", contents)
  elif version < 2:
    raise ValueError(f"{msgpack_file} is a version-{version} T5X checkpoint; versions before 2 are not supported. "
                     f"Re-save it with a current T5X (version {VERSION}).")
  else:
    state = contents.get("optimizer")
  if not isinstance(state, dict) or "target" not in state:
    keys = sorted(state) if isinstance(state, dict) else type(state).__name__
    raise ValueError(f"{msgpack_file} has no 'target' params (found {keys}); it is not a T5X train state.")
  return state


def load_t5x_checkpoint(path: epath.PathLike, step: int | None = None,
                        restore_dtype: str | np.dtype | None = None,
                        include_optimizer_state: bool = True, lazy: bool = False) -> dict[str, Any]:
  """Loads a T5X native checkpoint as nested dicts of numpy arrays.

  Args:
    path: a model dir holding `checkpoint_<step>` dirs (the latest is used unless `step` is given), one
      `checkpoint_<step>` dir, or its msgpack `checkpoint` file. Local or `gs://`.
    step: which step of a model dir to load.
    restore_dtype: cast the floating `target` arrays to this dtype (optimizer state is never cast).
    include_optimizer_state: when False, `state/param_states` is dropped without reading its zarr arrays.
    lazy: leave the zarr arrays in storage: their leaves are `StoredArray`s (shape, dtype, region reads), which
      `shard_reads.place` reads shard by shard.

  Returns:
    `{'target': params, 'state': {'step': int32 array, 'param_states': ...}}`; leaves T5X stored as None stay None.
  """
  cast_to = _floating_dtype(restore_dtype, "restore_dtype")
  msgpack_file = _find_msgpack(path, step)
  state = _read_train_state(msgpack_file)
  if not include_optimizer_state and isinstance(state.get("state"), dict):
    state = {**state, "state": {k: v for k, v in state["state"].items() if k != "param_states"}}
  state = _parallel_map(lambda p, x: _read_leaf(p, x, msgpack_file.parent, lazy), state,
                        lambda p, x: _stored_apart(x))
  state["target"] = _cast_floats(state["target"], cast_to)
  return state


def load_t5x_params(path: epath.PathLike, step: int | None = None,
                    restore_dtype: str | np.dtype | None = None) -> dict[str, Any]:
  """Just the `target` params of a T5X native checkpoint (optimizer arrays are not read)."""
  return load_t5x_checkpoint(path, step, restore_dtype, include_optimizer_state=False)["target"]


def load_variable(path: epath.PathLike, variable_path: str, restore_dtype: str | np.dtype | None = None,
                  step: int | None = None) -> np.ndarray:
  """Reads one leaf, e.g. 'token_embedder/embedding' or 'target/encoder/prompt/prompt/prompt' or 'state/step'.

  Paths that do not start with 'target/', 'state/' or 'flax_mutables/' are looked up under 'target'. Only the
  zarr array of that leaf is read.
  """
  cast_to = _floating_dtype(restore_dtype, "restore_dtype")
  keys = [k for k in variable_path.split("/") if k]
  if not keys:
    raise ValueError(f"variable_path={variable_path!r} is empty; give a path like 'token_embedder/embedding'.")
  msgpack_file = _find_msgpack(path, step)
  node = _read_train_state(msgpack_file)
  if keys[0] not in _STATE_ROOTS:
    keys = ["target", *keys]
  for depth, key in enumerate(keys):
    if not isinstance(node, Mapping) or is_tensorstore_spec(node) or key not in node:
      parent = "/".join(keys[:depth]) or "the top level"
      found = sorted(node) if isinstance(node, Mapping) and not is_tensorstore_spec(node) else "a leaf"
      raise KeyError(f"No variable {variable_path!r} in {msgpack_file}: {parent} has no {key!r} (it holds {found}).")
    node = node[key]
  if isinstance(node, Mapping) and not is_tensorstore_spec(node):
    raise ValueError(f"{variable_path!r} in {msgpack_file} is a subtree with children {sorted(node)}, not a variable.")
  value = _read_leaf(tuple(keys), node, msgpack_file.parent, lazy=False) if _stored_apart(node) else node
  return _cast_floats(value, cast_to)


# ----------------------------------------------------------------------------------------------------- writing


def _as_leaf(path: tuple[str, ...], x: Any) -> Any:
  """numpy array for array-likes; None and Python scalars stay as they are (inline msgpack)."""
  if x is None or isinstance(x, (bool, int, float, complex, str, np.generic)):
    return x
  if hasattr(x, "__array__"):
    return np.asarray(x)
  raise TypeError(f"Cannot save {'/'.join(path)} of type {type(x).__name__}; leaves must be arrays, scalars or None.")


def _tensorstore_spec(name: str, metadata: dict[str, Any], dtype: np.dtype, on_gcs: bool) -> dict[str, Any]:
  """The spec leaf T5X puts in the msgpack file for a zarr array: relative path, current shape."""
  kvstore = {"driver": "gcs", "bucket": DUMMY_BUCKET} if on_gcs else {"driver": "file"}
  return {
      "driver": "zarr",
      "dtype": dtype.name,
      "kvstore": {**kvstore, "path": f"{name}/"},
      "metadata": {key: metadata[key] for key in ("chunks", "compressor", "shape")},
  }


def _remove_old_checkpoints(model_dir: epath.Path, keep: int) -> None:
  for step in formats.all_steps(model_dir)[:-keep]:
    old = formats.checkpoint_dir(model_dir, step)
    if (old / PINNED_FILE).exists():
      continue
    logging.info("Deleting checkpoint %s (keep=%d).", old, keep)
    old.rmtree()


def save_t5x_checkpoint(model_dir: epath.PathLike, step: int, params: Mapping[str, Any],
                        param_states: Mapping[str, Any] | None = None, *, dtype: str | None = "float32",
                        compressor: str | None = "gzip", inline_names: Callable[[str], bool] | None = None,
                        keep: int | None = None, chunk_shapes: Mapping[str, Sequence[int]] | None = None) -> str:
  """Writes `<model_dir>/checkpoint_<step>` in T5X native format, version 3; returns that dir.

  Args:
    model_dir: local or `gs://` dir; created if needed.
    step: the train step, saved as `state/step` (int32).
    params: the params tree (no 'params' or 'target' key on top).
    param_states: optimizer state per param (same tree, a dict or None per leaf); None saves None for every param,
      which is how T5X stores params that no optimizer updates.
    dtype: floating `target` arrays are cast to this before writing ('float32', 'bfloat16', or None to keep).
    compressor: 'gzip' (level 1) or 'zstd' for the zarr chunks, or None for raw chunks.
    inline_names: given the dotted name of an array with ndim >= 1 (e.g. 'target.encoder.encoder_norm.scale' or
      'state.param_states.token_embedder.embedding.v'), True keeps it inline in the msgpack file. By default every
      such array goes to its own zarr dir; 0-d arrays and scalars are always inline.
    keep: after saving, delete the oldest `checkpoint_<step>` dirs beyond this many (dirs with PINNED are kept).
    chunk_shapes: zarr chunk shape by dotted name (e.g. 'target.token_embedder.embedding'); T5X chunks each array
      by its per-device shard shape. Others get chunks of at most 64 MiB made of divisors of their shape.

  The files go to `checkpoint_<step>.tmp-<unix time>` first, which is renamed once complete (and removed if
  writing fails). Nothing is written when `checkpoint_<step>` already exists.
  """
  if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
    raise ValueError(f"step={step!r} must be a non-negative int.")
  if dtype not in SAVE_DTYPES:
    raise ValueError(f"dtype={dtype!r} is not supported; use one of {SAVE_DTYPES}.")
  if compressor not in zarr_store.WRITE_COMPRESSORS:
    raise ValueError(f"compressor={compressor!r} is not supported; use one of {zarr_store.WRITE_COMPRESSORS}.")
  if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
    raise ValueError(f"keep={keep!r} must be None (keep all) or a positive int.")
  if not isinstance(params, Mapping):
    raise TypeError(f"params must be a nested dict of arrays, got {type(params).__name__}.")
  model_dir = epath.Path(model_dir)
  final_dir = formats.checkpoint_dir(model_dir, step)
  if final_dir.exists():
    logging.info("Checkpoint %s already exists; step %d is not saved again.", final_dir, step)
    return str(final_dir)

  if param_states is None:
    param_states = _map_leaves(lambda p, x: None, params)
  train_state = {
      "target": _cast_floats(_map_leaves(_as_leaf, params), _floating_dtype(dtype, "dtype")),
      "state": {"step": np.asarray(step, np.int32), "param_states": _map_leaves(_as_leaf, param_states)},
  }
  on_gcs = str(model_dir).startswith("gs://")
  keep_inline = inline_names or (lambda name: False)

  tmp_dir = model_dir / f"checkpoint_{step}.tmp-{int(time.time())}"
  tmp_dir.mkdir(parents=True)

  def write_array(path: tuple[str, ...], array: np.ndarray) -> dict[str, Any]:
    name = ".".join(path)
    chunks = (chunk_shapes or {}).get(name)
    metadata = zarr_store.write_array(str(tmp_dir / name), array, compressor=compressor, chunks=chunks)
    return _tensorstore_spec(name, metadata, array.dtype, on_gcs)

  def goes_to_zarr(path: tuple[str, ...], x: Any) -> bool:
    return isinstance(x, np.ndarray) and x.ndim > 0 and not keep_inline(".".join(path))

  try:
    contents = {"version": VERSION, "optimizer": _parallel_map(write_array, train_state, goes_to_zarr)}
    (tmp_dir / formats.CHECKPOINT_FILE).write_bytes(serialization.msgpack_serialize(contents, in_place=True))
    tmp_dir.rename(final_dir)
  except BaseException:
    tmp_dir.rmtree(missing_ok=True)
    raise
  logging.info("Saved T5X checkpoint %s.", final_dir)
  if keep is not None:
    _remove_old_checkpoints(model_dir, keep)
  return str(final_dir)
