"""Our own run checkpoints under MODEL_DIR: Orbax (`checkpoint_<step>/{state,dataset}`) plus numpy prompt exports.

A checkpoint holds what a resumed run needs and nothing it can re-read: the trainable parameters (`target`),
the optimizer state and step (`state`), and the input pipeline position (`dataset`). Frozen weights stay in
INITIAL_CHECKPOINT_PATH. Every save also writes the trainable parameters matching the export regexes to
`numpy_checkpoints/checkpoint_<step>/<dotted.name>` (the reference's name, no suffix) and `<dotted.name>.npy`.

Resuming reads the newest checkpoint that restores: an unreadable newer one is named in a warning and moved aside
to `checkpoint_<step>.unreadable-<unix time>` (kept, never deleted; out of the way of the save that replaces it
and of `KEEP_CHECKPOINTS` pruning). A trainer that holds MODEL_DIR first removes what killed saves left behind:
Orbax's `checkpoint_<step>.orbax-checkpoint-tmp-*` folders (on gs://, `checkpoint_<step>` folders of ours without
Orbax's `commit_success.txt`) and unfinished exports `numpy_checkpoints/checkpoint_<step>.tmp-<time>`.
"""
from __future__ import annotations

import functools
import io
import logging
import re
import time
from typing import Any, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util

from prompt_tuning.errors import UserError
from prompt_tuning.family import PROMPT_REGEX
from prompt_tuning.runtime.checkpoints import zarr_store
from prompt_tuning.runtime.checkpoints.shard_reads import StoredArray

STATE, DATASET = "state", "dataset"
ORBAX_TMP = re.compile(r"checkpoint_\d+\.orbax-checkpoint-tmp.*")
EXPORT_TMP = re.compile(r"checkpoint_\d+\.tmp-\d+")
STEP_DIR = re.compile(r"checkpoint_\d+")
COMMIT_FILE = "commit_success.txt"  # Orbax's mark of a finished save on gs://, where it cannot rename


class UnreadableCheckpointsError(UserError):
  """No checkpoint in MODEL_DIR can be restored."""


def _to_numpy(tree: Any) -> Any:
  return jax.tree_util.tree_map(lambda x: np.asarray(x), tree)


def _absolute(path: epath.PathLike) -> epath.Path:
  """Orbax refuses relative paths; cloud paths are left alone."""
  return epath.Path(path) if "://" in str(path) else epath.Path(epath.Path(path).expanduser().resolve())


def _restore_as_numpy(state_dir: epath.Path) -> dict:
  """A saved pytree, whole, as host numpy: this works whatever processes and devices wrote it, and inside a jit
  trace (a prompt initialiser reading the embedding table)."""
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(state_dir).item_metadata.tree
  as_numpy = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(restore_args=as_numpy))


def load_orbax_params(location: epath.PathLike, dtype: str | None = None,
                      lazy: bool = False) -> tuple[dict, int | None]:
  """`target` params and the step of one of our Orbax checkpoints (a `checkpoint_<step>` dir).

  With `lazy`, the params are `StoredArray`s: Orbax's zarr arrays read region by region through TensorStore, as
  T5X native arrays are; only the array metadata and the step are read now.
  """
  location = _absolute(location)
  state_dir = location / STATE if (location / STATE).exists() else location
  if lazy:
    arrays = _saved_arrays(state_dir, ("target", "state.step"))
    target = {keys[1:]: value for keys, value in arrays.items() if keys[0] == "target"}
    if not target:
      raise ValueError(f"Orbax checkpoint {str(location)!r} holds no 'target' params (arrays: "
                       f"{sorted('/'.join(keys) for keys in arrays)}).")
    params = traverse_util.unflatten_dict(target)
    if dtype is not None:
      params = jax.tree_util.tree_map(lambda x: x.astype(dtype) if np.issubdtype(x.dtype, np.floating) else x,
                                      params)
    step = arrays.get(("state", "step"))
    return params, None if step is None else int(step.read())
  restored = _restore_as_numpy(state_dir)
  if "target" not in restored:
    raise ValueError(f"Orbax checkpoint {str(location)!r} holds no 'target' params (keys: {sorted(restored)}).")
  params = _to_numpy(restored["target"])
  if dtype is not None:
    params = jax.tree_util.tree_map(lambda x: x.astype(dtype) if np.issubdtype(x.dtype, np.floating) else x, params)
  step = restored.get("state", {}).get("step")
  return params, None if step is None else int(np.asarray(step))


def _restore_leaf(state_dir: epath.Path, keys: Sequence[str], restore_args: ocp.RestoreArgs, item: Any = 0) -> Any:
  """One leaf of a saved pytree, alone (Orbax partial restore)."""
  nest = lambda leaf: functools.reduce(lambda inner, key: {key: inner}, reversed(keys), leaf)
  restored = ocp.PyTreeCheckpointer().restore(state_dir, args=ocp.args.PyTreeRestore(
      item=nest(item), restore_args=nest(restore_args), partial_restore=True))
  return functools.reduce(lambda tree, key: tree[key], keys, restored)


def _saved_arrays(state_dir: epath.Path, names: Sequence[str]) -> dict[tuple[str, ...], StoredArray]:
  """The arrays of a saved pytree under the '.'-joined key paths `names` (a subtree or a leaf), by key path, left
  in storage. Orbax stores each array as a zarr array under its '.'-joined key path: keys of the checkpoint's
  OCDBT database (its default), whose manifest and B-tree this reads once, or folders (`use_ocdbt=False`)."""
  root = str(state_dir)
  kvstore = (zarr_store.ocdbt_kvstore_spec(root) if ocp.type_handlers.is_ocdbt_checkpoint(state_dir)
             else zarr_store.kvstore_spec(root))
  stores = {key: store for name in names for key, store in zarr_store.open_arrays(kvstore, name).items()
            if key == name or key.startswith(name + ".")}
  return {tuple(key.split(".")): zarr_store.stored_array(store, key.replace(".", "/")) for key, store in stores.items()}


def load_orbax_variable(location: epath.PathLike, variable_path: str) -> np.ndarray:
  """One leaf (e.g. 'token_embedder/embedding', under 'target' unless the path starts with 'state/') of one of our
  Orbax checkpoints, read alone (Orbax partial restore) as host numpy."""
  location = _absolute(location)
  state_dir = location / STATE if (location / STATE).exists() else location
  keys = [k for k in variable_path.split("/") if k]
  if keys[:1] not in (["target"], ["state"]):
    keys = ["target", *keys]
  checkpointer = ocp.PyTreeCheckpointer()
  node = checkpointer.metadata(state_dir).item_metadata.tree
  for depth, key in enumerate(keys):
    if not isinstance(node, dict) or key not in node:
      held = sorted(node) if isinstance(node, dict) else "a leaf"
      raise KeyError(f"No variable {variable_path!r} in {str(location)!r}: {'/'.join(keys[:depth]) or 'the top level'} "
                     f"has no {key!r} (it holds {held}).")
    node = node[key]
  if isinstance(node, dict):
    raise ValueError(f"{variable_path!r} in {str(location)!r} is a subtree with children {sorted(node)}, not a "
                     "variable.")
  return np.asarray(_restore_leaf(state_dir, keys, ocp.RestoreArgs(restore_type=np.ndarray)))


def export_numpy(model_dir: epath.PathLike, step: int, params: Any, regexes: Sequence[str]) -> list[epath.Path]:
  """Write matching parameters as `numpy_checkpoints/checkpoint_<step>/<dotted.name>` (+ `.npy`), atomically.

  Process 0 writes them; only the matching parameters are copied to the host (the others may be sharded across
  processes).
  """
  flat = traverse_util.flatten_dict(params, sep="/")
  chosen = {k: v for k, v in flat.items() if any(re.fullmatch(r, k) for r in regexes)}
  if not chosen or jax.process_index() != 0:
    return []
  chosen = _to_numpy(chosen)
  final = epath.Path(model_dir) / "numpy_checkpoints" / f"checkpoint_{step}"
  tmp = final.parent / f"{final.name}.tmp-{int(time.time())}"
  tmp.mkdir(parents=True, exist_ok=True)
  written = []
  for name, value in chosen.items():
    dotted = name.replace("/", ".")
    buf = io.BytesIO()
    np.save(buf, np.asarray(value, np.float32) if np.issubdtype(value.dtype, np.floating) else value)
    for fname in (dotted, dotted + ".npy"):
      (tmp / fname).write_bytes(buf.getvalue())
      written.append(final / fname)
  if final.exists():
    final.rename(final.parent / f"{final.name}.backup-{int(time.time())}")
  tmp.rename(final)
  return written


def remove_unfinished_saves(model_dir: epath.PathLike) -> list[str]:
  """Delete the temporary folders that interrupted saves left in MODEL_DIR (see the module doc); call it only while
  holding MODEL_DIR, since a running trainer's save in progress looks the same. Returns the removed paths."""
  root = _absolute(model_dir)
  if jax.process_index() != 0 or not root.is_dir():
    return []
  doomed = [p for p in root.iterdir() if ORBAX_TMP.fullmatch(p.name) and p.is_dir()]
  if str(root).startswith("gs://"):
    doomed += [p for p in root.iterdir() if STEP_DIR.fullmatch(p.name) and _uncommitted_orbax_save(p)]
  exports = root / "numpy_checkpoints"
  if exports.is_dir():
    doomed += [p for p in exports.iterdir() if EXPORT_TMP.fullmatch(p.name) and p.is_dir()]
  for path in doomed:
    logging.warning("Removing %s, left by an interrupted save.", path)
    path.rmtree()
  return [str(p) for p in doomed]


def _uncommitted_orbax_save(path: epath.Path) -> bool:
  """A `checkpoint_<step>` folder Orbax began on gs:// and never marked done (not a T5X native checkpoint)."""
  names = {p.name for p in path.iterdir()} if path.is_dir() else set()
  return COMMIT_FILE not in names and "checkpoint" not in names and bool(names & {STATE, DATASET})


def _first_line(error: BaseException, limit: int = 300) -> str:
  text = " ".join(f"{type(error).__name__}: {error}".split())
  return text if len(text) <= limit else text[:limit] + " ..."


class RunCheckpointer:
  """Orbax `CheckpointManager` over MODEL_DIR with T5X's `checkpoint_<step>` naming."""

  def __init__(self, model_dir: str, keep: int | None = None, use_async: bool = False,
               export_regexes: Sequence[str] = (PROMPT_REGEX,)):
    self.model_dir = _absolute(model_dir)
    self.export_regexes = tuple(export_regexes)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, step_prefix="checkpoint", create=True,
                                           enable_async_checkpointing=use_async)
    self._manager = ocp.CheckpointManager(self.model_dir, options=options,
                                          item_names=(STATE, DATASET))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, target: Any, opt_state: Any, data_position: int) -> None:
    """Save (atomically: Orbax writes a temporary dir and renames it) and export the prompt."""
    if step in self._manager.all_steps():
      return
    state = {"target": target, "state": {"step": np.int32(step), "opt_state": opt_state}}
    self._manager.save(step, args=ocp.args.Composite(
        **{STATE: ocp.args.PyTreeSave(state), DATASET: ocp.args.JsonSave({"position": int(data_position)})}),
        force=True)
    export_numpy(self.model_dir, step, target, self.export_regexes)
    logging.info("Saved checkpoint_%d under %s", step, self.model_dir)

  def restore(self, abstract_target: Any, abstract_opt_state: Any, step: int | None = None):
    """(target, opt_state, step, data_position) of the latest (or given) save, placed like the abstract trees."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    abstract = {"target": abstract_target, "state": {"step": np.int32(0), "opt_state": abstract_opt_state}}
    restored = self._manager.restore(step, args=ocp.args.Composite(
        **{STATE: ocp.args.PyTreeRestore(abstract), DATASET: ocp.args.JsonRestore()}))
    state, dataset = restored[STATE], restored[DATASET]
    return state["target"], state["state"]["opt_state"], int(state["state"]["step"]), int(dataset["position"])

  def restore_latest(self, abstract_target: Any, abstract_opt_state: Any):
    """`restore` of the newest checkpoint that reads back, or None when MODEL_DIR has none. Each unreadable newer
    one is named in a warning with the reason and moved aside (kept). When none reads back nothing is moved and
    `UnreadableCheckpointsError` lists them (e.g. a model or prompt setting that differs from the run's)."""
    failed: list[tuple[int, str]] = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        restored = self.restore(abstract_target, abstract_opt_state, step)
      except Exception as e:  # pylint: disable=broad-except  # whatever the damage, try the next older save
        failed.append((step, _first_line(e)))
        logging.warning("checkpoint_%d in %s is unreadable: %s", step, self.model_dir, failed[-1][1])
        continue
      if failed:
        self._set_aside([s for s, _ in failed])
      return restored
    if failed:
      listed = "; ".join(f"checkpoint_{s}: {why}" for s, why in failed)
      raise UnreadableCheckpointsError(
          f"No checkpoint in MODEL_DIR={str(self.model_dir)!r} can be restored ({listed}). If the run's model or "
          "prompt settings changed, use the run's settings or another MODEL_DIR; if the files are damaged, move "
          "those folders out of MODEL_DIR to start again from INITIAL_CHECKPOINT_PATH.")
    return None

  def _set_aside(self, steps: Sequence[int]) -> None:
    """Move unreadable checkpoints out of Orbax's sight, keeping their files."""
    if jax.process_index() == 0:
      stamp = int(time.time())
      for step in steps:
        source = self.model_dir / f"checkpoint_{step}"
        target = self.model_dir / f"checkpoint_{step}.unreadable-{stamp}"
        source.rename(target)
        logging.warning("Moved the unreadable checkpoint_%d aside to %s (kept for inspection; delete it when done).",
                        step, target)
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes("prompt_tuning_set_aside_unreadable")
    self._manager.reload()

  def restore_numpy(self, step: int) -> tuple[Any, Any, int]:
    """(target, opt_state, data_position) saved at `step`, as host numpy trees shaped as on disk."""
    state = _restore_as_numpy(self.model_dir / f"checkpoint_{step}" / STATE)
    dataset = self._manager.restore(step, args=ocp.args.Composite(**{DATASET: ocp.args.JsonRestore()}))[DATASET]
    return state["target"], state["state"]["opt_state"], int(dataset["position"])

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
