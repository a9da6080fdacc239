"""The jitted train step: gradients only for the trainable subtree, optimizer state only for it.

`TrainState` holds the trainable parameters, their optimizer state and the step. Frozen parameters are a
separate, never-donated argument: they are not differentiated, copied or updated, so they stay bit-identical.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import optax

from prompt_tuning.runtime.models import EncoderDecoderModel
from prompt_tuning.runtime.optim import merge_trainable

Array = jax.Array
Batch = Mapping[str, Array]


@flax.struct.dataclass
class TrainState:
  step: Array  # int32 scalar, the global step (continues from a restored checkpoint's)
  params: Any  # trainable parameters only
  opt_state: Any
  first_nonfinite_step: Array  # int32, -1 until a step produces a NaN/Inf loss


def init_train_state(params: Any, optimizer: optax.GradientTransformation, step: int = 0) -> TrainState:
  return TrainState(step=jnp.asarray(step, jnp.int32), params=params, opt_state=optimizer.init(params),
                    first_nonfinite_step=jnp.asarray(-1, jnp.int32))


def _split_microbatches(batch: Batch, num_microbatches: int) -> Batch:
  def split(x):
    if x.shape[0] % num_microbatches:
      raise ValueError(f"Batch size {x.shape[0]} is not divisible by num_microbatches={num_microbatches}.")
    return x.reshape((num_microbatches, x.shape[0] // num_microbatches) + x.shape[1:])
  return jax.tree_util.tree_map(split, batch)


def make_train_step(model: EncoderDecoderModel, optimizer: optax.GradientTransformation,
                    num_microbatches: int | None = None,
                    dropout: bool = True) -> Callable[[TrainState, Any, Batch, Array], tuple[TrainState, dict]]:
  """`train_step(state, frozen_params, batch, rng) -> (state, metrics)`; jit it with `donate_argnums=0`."""

  def loss_and_grad(trainable, frozen, batch, rng):
    def loss_fn(p):
      return model.loss_fn(merge_trainable(p, frozen), batch, rng if dropout else None)
    return jax.value_and_grad(loss_fn, has_aux=True)(trainable)

  def train_step(state: TrainState, frozen: Any, batch: Batch, rng: Array):
    step_rng = jax.random.fold_in(rng, state.step)
    if not num_microbatches or num_microbatches <= 1:
      (loss, metrics), grads = loss_and_grad(state.params, frozen, batch, step_rng)
    else:
      micro = _split_microbatches(batch, num_microbatches)

      def body(i, carry):
        grad_acc, loss_acc, metrics_acc = carry
        mb = jax.tree_util.tree_map(lambda x: x[i], micro)
        (loss_i, metrics_i), g = loss_and_grad(state.params, frozen, mb, jax.random.fold_in(step_rng, i))
        add = lambda a, b: a + b.astype(a.dtype)
        return (jax.tree_util.tree_map(add, grad_acc, g), loss_acc + loss_i,
                jax.tree_util.tree_map(add, metrics_acc, metrics_i))

      zeros_g = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
      first = jax.tree_util.tree_map(lambda x: x[0], micro)
      metric_shapes = jax.eval_shape(lambda: loss_and_grad(state.params, frozen, first, step_rng)[0][1])
      zeros_m = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes)
      grads, loss, metrics = jax.lax.fori_loop(0, num_microbatches, body, (zeros_g, jnp.float32(0.0), zeros_m))
      grads = jax.tree_util.tree_map(lambda g, p: g.astype(p.dtype), grads, state.params)
      # Ratios (accuracy, per-token losses) were summed over microbatches: average them.
      metrics = {k: v if k in ("loss", "z_loss", "cross_ent_loss") else v / num_microbatches
                 for k, v in metrics.items()}
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss)
    first_bad = jnp.where((state.first_nonfinite_step < 0) & ~finite, state.step, state.first_nonfinite_step)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                           first_nonfinite_step=first_bad)
    metrics = dict(metrics, loss=loss)
    return new_state, metrics

  return train_step


def partition_train_step(train_step: Callable, state: TrainState, frozen: Any, frozen_shardings: Any,
                         partitioner: Any) -> tuple[Any, TrainState]:
  """Jit the step with explicit shardings: the state keeps its placement (so the step compiles once) and is
  donated; frozen weights are an ordinary, never-donated argument; the batch is split over 'data'."""
  mesh = partitioner.mesh
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def placement(x):
    sharding = getattr(x, "sharding", None)
    return sharding if isinstance(sharding, jax.sharding.NamedSharding) else replicated

  state_shardings = jax.tree_util.tree_map(placement, state)
  state = jax.device_put(state, state_shardings)
  step = partitioner.partition(train_step,
                               in_shardings=(state_shardings, frozen_shardings, partitioner.data_sharding, replicated),
                               out_shardings=(state_shardings, replicated), donate_argnums=(0,))
  return step, state


def make_eval_step(model: EncoderDecoderModel) -> Callable[[Any, Any, Batch], dict]:
  """Teacher-forced metrics (train_eval) without dropout: `eval_step(trainable, frozen, batch)`."""

  def eval_step(trainable, frozen, batch):
    _, metrics = model.loss_fn(merge_trainable(trainable, frozen), batch, None)
    return metrics

  return eval_step
