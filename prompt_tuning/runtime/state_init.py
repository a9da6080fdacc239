"""Build the parameters of a run: abstract tree -> shardings -> checkpoint values or fresh init, split by regex."""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from prompt_tuning.errors import UserError
from prompt_tuning.runtime.checkpoints.restore import restore_params
from prompt_tuning.runtime.configs import DatasetConfig, RestoreCheckpointConfig
from prompt_tuning.runtime.models import BaseModel
from prompt_tuning.runtime.optim import split_trainable


@dataclasses.dataclass
class RunParams:
  trainable: Any
  frozen: Any
  trainable_shardings: Any
  frozen_shardings: Any
  checkpoint_step: int | None  # the step stored in the initial checkpoint (T5X keeps counting from it)


def _place(value: np.ndarray, sharding: jax.sharding.Sharding, dtype: Any) -> jax.Array:
  """A global array from a small host value (a checkpoint's inline msgpack arrays); each device gets its shard.

  Checkpoint arrays kept in files never come here: `restore_params` reads them shard by shard."""
  value = np.asarray(value, dtype)
  return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])


# Parameter shapes do not depend on the sequence lengths: eval and infer build their parameters with short ones.
INFERENCE_INIT_LENGTHS = {"inputs": 8, "targets": 8}


def input_shapes_for(model: BaseModel, feature_lengths: Mapping[str, int],
                     batch_size: int) -> dict[str, tuple[int, int]]:
  """The model's feature shapes for the task feature lengths (each wrapper converts them as its converter does)."""
  return model.input_shapes(feature_lengths, batch_size)


def build_run_params(model: BaseModel, partitioner: Any, input_shapes: Mapping[str, tuple[int, ...]],
                     restore: RestoreCheckpointConfig | None, trainable_regexes: Sequence[str],
                     rng: jax.Array) -> RunParams:
  """Frozen weights from `restore.path` (T5X / Orbax / HF), each process reading from storage only the shards its
  devices hold; the rest (e.g. the prompt) freshly initialised, created directly with their shardings; then split
  into trainable and frozen. The partitioner takes on the model's family's logical-axis rules."""
  partitioner.add_logical_axis_rules(model.family.logical_axis_rules)
  boxed = jax.eval_shape(lambda key: model.get_initial_variables(key, input_shapes), rng)["params"]
  shardings = partitioner.params_shardings(boxed)
  abstract = nn.meta.unbox(boxed)

  ckpt_step = None
  if restore is not None and restore.path:
    try:
      merged, ckpt_step = restore_params(abstract, restore.path, restore.step, restore.dtype,
                                         restore.assignment_map, restore.fallback_to_scratch, shardings=shardings)
    except UserError:
      raise
    except (OSError, EOFError, ValueError) as e:  # a truncated file, a damaged chunk, a malformed msgpack
      raise UserError(f"The checkpoint {restore.path!r} cannot be read ({type(e).__name__}: "
                      f"{' '.join(str(e).split())[:300]}); where it is truncated or damaged, use an intact "
                      "copy.") from e
    check_finite_weights(merged, restore.path)
  else:
    merged = abstract
  flat = traverse_util.flatten_dict(merged, sep="/")
  flat_shardings = traverse_util.flatten_dict(shardings, sep="/")
  flat_abstract = traverse_util.flatten_dict(abstract, sep="/")
  to_init = sorted(k for k, v in flat.items() if isinstance(v, jax.ShapeDtypeStruct))
  if to_init:
    logging.info("Initialising %d parameters from scratch: %s", len(to_init), to_init[:5])

    def init_subset(key):
      full = traverse_util.flatten_dict(nn.meta.unbox(model.get_initial_variables(key, input_shapes)["params"]),
                                        sep="/")
      return {k: full[k] for k in to_init}  # XLA drops the initialisers of everything else

    fresh = jax.jit(init_subset, out_shardings={k: flat_shardings[k] for k in to_init})(rng)
    flat.update(fresh)
  for k, v in flat.items():
    if not isinstance(v, jax.Array):
      flat[k] = _place(v, flat_shardings[k], flat_abstract[k].dtype)
  params = traverse_util.unflatten_dict(flat, sep="/")
  trainable, frozen = split_trainable(params, trainable_regexes)
  sh_trainable, sh_frozen = split_trainable(traverse_util.unflatten_dict(flat_shardings, sep="/"),
                                            trainable_regexes)
  return RunParams(trainable, frozen, sh_trainable, sh_frozen, ckpt_step)


@jax.jit
def _sums_are_finite(tree: Any) -> Any:
  """Per leaf, whether its sum is finite: false wherever a NaN/Inf is (and where a finite sum overflows). One
  program over the whole tree, reading each leaf once: counting `~isfinite` over many leaves in one program made
  XLA CPU hold a temporary as large as the model (a restore's peak memory doubled)."""
  return jax.tree_util.tree_map(lambda x: jnp.isfinite(jnp.sum(x)), tree)


@jax.jit
def _nonfinite(x: jax.Array) -> jax.Array:
  return jnp.sum(~jnp.isfinite(x))


def nonfinite_counts(params: Any) -> dict[str, int]:
  """NaN/Inf count per floating-point variable ("a/b/c" paths). Arrays on devices are checked there (one jitted
  reduction; only a variable whose sum is not finite is then counted), so no process gathers a whole sharded
  array; host arrays are counted on the host."""
  flat = traverse_util.flatten_dict(params, sep="/")
  floats = {name: value for name, value in flat.items()
            if isinstance(value, (np.ndarray, jax.Array)) and jnp.issubdtype(value.dtype, jnp.inexact)}
  counts = {name: int(np.size(value) - np.count_nonzero(np.isfinite(value)))
            for name, value in floats.items() if isinstance(value, np.ndarray)}
  placed = {name: value for name, value in floats.items() if name not in counts}
  if placed:  # every process takes the same branches: the sums are global
    finite = jax.device_get(_sums_are_finite(placed))
    counts.update({name: 0 if finite[name] else int(_nonfinite(value)) for name, value in placed.items()})
  return counts


def check_finite_weights(params: Any, path: str) -> None:
  """Weights read from a checkpoint must be finite: NaN/Inf there (a damaged file, a diverged run) is refused at
  load, naming the variables, instead of training or serving on it."""
  counts = nonfinite_counts(params)
  bad = {name: count for name, count in counts.items() if count}
  if bad:
    listed = ", ".join(f"{name} ({count} values)" for name, count in list(bad.items())[:3])
    raise UserError(f"The checkpoint {path!r} holds NaN/Inf in {len(bad)} variable(s): {listed}. It is damaged or "
                    "from a diverged run; use an intact checkpoint (e.g. an earlier checkpoint_<step>).")


def build_inference_params(model: BaseModel, partitioner: Any, dataset_cfg: DatasetConfig,
                           restore: RestoreCheckpointConfig | None, seed: int = 0) -> RunParams:
  """The parameters eval and infer run with, all in `trainable` (nothing is held apart as frozen): the
  checkpoint's values, and a fresh initialisation from `seed` for what it lacks."""
  shapes = input_shapes_for(model, INFERENCE_INIT_LENGTHS, dataset_cfg.batch_size)
  return build_run_params(model, partitioner, shapes, restore, (".*",), jax.random.PRNGKey(seed))
