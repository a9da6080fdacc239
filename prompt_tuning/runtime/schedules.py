"""T5X's learning-rate scheduler: a product of named factors, evaluated at the global step."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Schedule = Callable[[jax.typing.ArrayLike], jax.Array]


def create_learning_rate_scheduler(
    factors: str = "constant * linear_warmup * rsqrt_decay",
    base_learning_rate: float = 0.5,
    warmup_steps: int = 1000,
    decay_factor: float = 0.5,
    steps_per_decay: int = 20000,
    steps_per_cycle: int = 100000,
    step_offset: int = 0,
    min_learning_rate: float = 1e-8,
) -> Schedule:
  """Returns a jittable `lr(step)`: the product of the `*`-separated factors, floored at min_learning_rate.

  With `s = max(0, step - step_offset)`, the factors are:
    constant: base_learning_rate.
    linear_warmup: min(1, s / warmup_steps).
    linear_decay: base_learning_rate · min(s / warmup_steps, 1 + decay_factor · (warmup_steps - s));
      it already contains the constant and the warmup.
    rsqrt_decay: 1 / √max(s, warmup_steps).
    rsqrt_normalized_decay: √warmup_steps / √max(s, warmup_steps).
    decay_every: decay_factor ** (s // steps_per_decay).
    cosine_decay: cyclic half cosine, max(0, ½(1 + cos(π · frac((s - warmup_steps) / steps_per_cycle)))),
      held at 1 before warmup_steps.
  The result is float32. An unknown factor, or a non-positive length that a factor divides by, raises
  ValueError.
  """

  def constant(lr, s):
    return lr * base_learning_rate

  def linear_warmup(lr, s):
    return lr * jnp.minimum(1.0, s / warmup_steps)

  def linear_decay(lr, s):
    return lr * (base_learning_rate * jnp.minimum(s / warmup_steps, 1.0 + decay_factor * (warmup_steps - s)))

  def rsqrt_decay(lr, s):
    return lr / jnp.sqrt(jnp.maximum(s, warmup_steps))

  def rsqrt_normalized_decay(lr, s):
    return lr * jnp.sqrt(warmup_steps) / jnp.sqrt(jnp.maximum(s, warmup_steps))

  def decay_every(lr, s):
    return lr * decay_factor**(s // steps_per_decay)

  def cosine_decay(lr, s):
    progress = jnp.maximum(0.0, (s - warmup_steps) / float(steps_per_cycle))
    return lr * jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(jnp.pi * (progress % 1.0))))

  factor_fns = {fn.__name__: fn for fn in (constant, linear_warmup, linear_decay, rsqrt_decay,
                                            rsqrt_normalized_decay, decay_every, cosine_decay)}
  names = [name.strip() for name in factors.split("*")]
  unknown = [name for name in names if name not in factor_fns]
  if unknown:
    raise ValueError(f"Unknown learning-rate factor(s) {unknown} in factors={factors!r}; "
                     f'valid factors: {", ".join(factor_fns)}.')
  positive = {"warmup_steps": (warmup_steps, {"linear_warmup", "linear_decay", "rsqrt_normalized_decay"}),
              "steps_per_decay": (steps_per_decay, {"decay_every"}),
              "steps_per_cycle": (steps_per_cycle, {"cosine_decay"})}
  for arg, (value, users) in positive.items():
    if value <= 0 and users.intersection(names):
      raise ValueError(f"{arg}={value} must be positive when factors={factors!r} uses "
                       f"{sorted(users.intersection(names))}.")
  fns = [factor_fns[name] for name in names]

  def step_fn(step: jax.typing.ArrayLike) -> jax.Array:
    s = jnp.maximum(0, jnp.asarray(step) - step_offset)
    lr = 1.0
    for fn in fns:
      lr = fn(lr, s)
    return jnp.asarray(jnp.maximum(lr, min_learning_rate), jnp.float32)

  return step_fn
