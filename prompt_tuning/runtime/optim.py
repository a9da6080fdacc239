"""Optimizers for the trainable subtree (T5X Adafactor from optax pieces) and the trainable/frozen split.

Trainable and frozen parameters are plain nested dicts holding only their own leaves (a leaf is in exactly
one of the two), so `jax.grad`, optax and checkpointers take them directly and optimizer state paths stay
T5X-like (`encoder/prompt/prompt/prompt`).
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any
FactorRule = Callable[[str, jax.Array], bool]


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _path_name(keypath: Sequence[Any]) -> str:
  """'/'-joined name of a pytree key path, e.g. 'encoder/prompt/prompt/prompt'."""
  return "/".join(_key_name(key) for key in keypath)


# ----------------------------------------------------------------------------------------------------------
# Adafactor.


def adafactor(
    learning_rate: optax.ScalarOrSchedule,
    *,
    decay_rate: float = 0.8,
    step_offset: int = 0,
    multiply_by_parameter_scale: bool = False,
    clipping_threshold: float | None = 1.0,
    weight_decay_rate: float | None = 1e-5,
    epsilon1: float = 1e-30,
    min_dim_size_to_factor: int = 128,
    factored: bool = True,
    beta1: float | None = None,
    factor_rule: FactorRule | None = None,
) -> optax.GradientTransformation:
  """T5X `adafactor.Adafactor` as an optax chain (defaults are prompt tuning's, not T5X's).

  Per leaf, at step t (the optimizer count, see `set_optimizer_step`):
    ρ = 1 - (t - step_offset + 1)^-decay_rate;  v = ρ·v + (1-ρ)·(g² + epsilon1), kept as row/column
    means for factored leaves;  y = g / √v;  y /= max(1, RMS(y) / clipping_threshold);
    u = lr·y (· max(RMS(p), 1e-3) with multiply_by_parameter_scale; then momentum beta1 on u);
    p ← (1 - weight_decay_rate)·p - u. Weight decay is NOT scaled by the learning rate.

  Factoring follows T5X's heuristic for rank ≤ 2 leaves, which T5X also uses when logical factor rules are
  given: a leaf is factored when its second-largest dim is ≥ min_dim_size_to_factor (so a [100, d] prompt
  keeps a full `v`, a [150, d] one is factored). `factor_rule(path, leaf) -> bool` can veto factoring per
  leaf ('/'-joined path); e.g. `lambda path, _: not re.fullmatch('.*prompt.*', path)`.

  Args mirror T5X's names; `learning_rate` is a float or an optax schedule of the optimizer count.
  """
  rms_kwargs = dict(decay_rate=decay_rate, step_offset=step_offset,
                    min_dim_size_to_factor=min_dim_size_to_factor, epsilon=epsilon1)
  if factor_rule is None or not factored:
    second_moment = optax.scale_by_factored_rms(factored=factored, **rms_kwargs)
  else:

    def labels(params):
      return jax.tree_util.tree_map_with_path(
          lambda path, leaf: "factored" if factor_rule(_path_name(path), leaf) else "full", params)

    second_moment = optax.multi_transform(
        {"factored": optax.scale_by_factored_rms(factored=True, **rms_kwargs),
         "full": optax.scale_by_factored_rms(factored=False, **rms_kwargs)}, labels)

  chain = [second_moment]
  if clipping_threshold is not None:
    chain.append(optax.clip_by_block_rms(clipping_threshold))
  chain.append(optax.scale_by_learning_rate(learning_rate, flip_sign=False))
  if multiply_by_parameter_scale:
    chain.append(optax.scale_by_param_block_rms())
  if beta1 is not None:
    chain.append(optax.ema(beta1, debias=False, accumulator_dtype=jnp.float32))
  if weight_decay_rate:
    chain.append(optax.add_decayed_weights(weight_decay_rate))
  chain.append(optax.scale(-1.0))
  return optax.chain(*chain)


def adamw(learning_rate: optax.ScalarOrSchedule, **kwargs: Any) -> optax.GradientTransformation:
  """`optax.adamw` (kwargs b1, b2, eps, weight_decay, mask, ...) for configs that pick optimizers by name."""
  return optax.adamw(learning_rate, **kwargs)


def set_optimizer_step(opt_state: PyTree, step: int | jax.Array) -> PyTree:
  """Sets every `count` in an optax state to `step` (keeping its dtype).

  T5X's Adafactor decays with the global step, which a run restored from a checkpoint continues (e.g. from
  1,100,000). A fresh optax state counts from 0; call this after restoring the step so the second-moment decay
  and any learning-rate schedule inside the optimizer see the same step as T5X.
  """
  if isinstance(step, (int, np.integer)) and not 0 <= step <= jnp.iinfo(jnp.int32).max:
    raise ValueError(f"step={step} does not fit the int32 optimizer counters.")
  found = []

  def set_count(path, leaf):
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "count":
      found.append(path)
      return jnp.full_like(leaf, step)
    return leaf

  new_state = jax.tree_util.tree_map_with_path(set_count, opt_state)
  if not found:
    raise ValueError("The optimizer state has no `count` fields to set; is it an optax state?")
  return new_state


# ----------------------------------------------------------------------------------------------------------
# Trainable / frozen split.


def _named_leaves(params: PyTree) -> list[tuple[tuple[str, ...], Any]]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  return [(tuple(_key_name(key) for key in path), leaf) for path, leaf in leaves]


def _matcher(regexes: Sequence[str]) -> Callable[[str], bool]:
  if isinstance(regexes, str):
    raise TypeError(f"regexes must be a sequence of patterns, not the string {regexes!r}; wrap it in a list.")
  compiled = [re.compile(regex) for regex in regexes]
  return lambda name: any(pattern.fullmatch(name) for pattern in compiled)


def _check_matches(any_match: bool, regexes: Sequence[str], params: PyTree) -> None:
  if not any_match:
    examples = ["/".join(path) for path, _ in _named_leaves(params)[:5]]
    raise ValueError(f"No parameter matches the trainable regexes {list(regexes)}. Patterns must fully match "
                     f"'/'-joined paths, e.g. {examples}.")


def trainable_mask(params: PyTree, regexes: Sequence[str]) -> PyTree:
  """Pytree of bools like `params`: True where the '/'-joined path fully matches one of `regexes`."""
  is_trainable = _matcher(regexes)
  mask = jax.tree_util.tree_map_with_path(lambda path, _: is_trainable(_path_name(path)), params)
  _check_matches(any(jax.tree_util.tree_leaves(mask)), regexes, params)
  return mask


def split_trainable(params: PyTree, regexes: Sequence[str]) -> tuple[dict, dict]:
  """Splits nested-dict params into (trainable, frozen) nested dicts holding only their own leaves."""
  is_trainable = _matcher(regexes)
  trainable, frozen = {}, {}
  for path, leaf in _named_leaves(params):
    (trainable if is_trainable("/".join(path)) else frozen)[path] = leaf
  _check_matches(bool(trainable), regexes, params)
  return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge_trainable(trainable: Mapping, frozen: Mapping) -> dict:
  """Inverse of `split_trainable`: one nested dict with the leaves of both (which must not overlap)."""
  flat_trainable = traverse_util.flatten_dict(trainable)
  flat_frozen = traverse_util.flatten_dict(frozen)
  overlap = sorted("/".join(path) for path in flat_trainable.keys() & flat_frozen.keys())
  if overlap:
    raise ValueError(f"Parameters are both trainable and frozen: {overlap[:5]}.")
  return traverse_util.unflatten_dict({**flat_frozen, **flat_trainable})
