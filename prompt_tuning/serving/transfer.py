"""ATTEMPT (Asai et al. 2022): a target prompt plus a per-instance attention mix of frozen source prompts.

SPoT (Vu et al. 2022) needs no module: the target prompt simply starts from a source prompt
(`serving/spot.gin`, reading it with `prompt_bank.load_prompt`).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import prompts
from prompt_tuning.serving.prompt_bank import PromptBank

Array = jax.Array
# Parameters that train in ATTEMPT (relative to the encoder's prompt module); the sources and the model stay put.
ATTEMPT_TRAINABLE_REGEXES = (r".*/prompt/prompt/prompt", r".*/prompt/prompt/scorer/.*")


def _max_pool(x: Array, valid: Array) -> Array:
  """[B, T, d] -> [B, d], the max over valid positions (0 for a row with none)."""
  pooled = jnp.max(jnp.where(valid[..., None], x, -jnp.inf), axis=1)
  return jnp.where(jnp.any(valid, axis=1)[:, None], pooled, 0.0)


class Scorer(nn.Module):
  """ATTEMPT's query network: down-projection, SiLU, up-projection back to the width, layer norm."""

  bottleneck_dim: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = nn.silu(nn.Dense(self.bottleneck_dim, name="down")(x))
    return nn.LayerNorm(name="norm")(nn.Dense(x.shape[-1], name="up")(h))


class AttemptPrompt(nn.Module):
  """Returns `target + sum_k a_k prompt_k` per example, `[B, P, d]`; k runs over the sources and the target.

  The weights come from the example: its embedded input, max-pooled over real tokens, goes through the
  scorer (down-projection to `bottleneck_dim`, SiLU, up-projection, layer norm) to a query h; each prompt,
  max-pooled over its rows, is a key; a = softmax(key . h / temperature), temperature d * e by default.
  The source prompts (`source_prompts/prompts`, a `PromptBank`) receive no gradient; the target prompt
  (`prompt`, the usual export path) and the scorer (`scorer/...`) train.
  """

  sources: Mapping[str, Any] | Sequence[Any]
  length: int = 100
  initializer: prompts.Initializer = prompts.random_uniform()
  bottleneck_dim: int = 100
  temperature: float | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: Array, embedded: Array, **unused_prompt_inputs: Array) -> Array:
    width = embedded.shape[-1]
    sources = jax.lax.stop_gradient(PromptBank(self.sources, self.length, name="source_prompts").all_prompts())
    if sources.shape[-1] != width:
      raise ValueError(f"ATTEMPT source prompts are {sources.shape[-1]} wide but the model is {width} wide; use "
                       "source prompts trained on this model size.")
    target = self.param("prompt", nn.with_logical_partitioning(self.initializer, prompts.PROMPT_AXES),
                        (self.length, width), jnp.float32)
    candidates = jnp.concatenate([sources, target[None]], axis=0)  # [K, P, d]
    keys = jnp.max(candidates, axis=1)  # [K, d]
    query = Scorer(self.bottleneck_dim, name="scorer")(_max_pool(embedded.astype(jnp.float32), tokens > 0))
    temperature = self.temperature or width * math.e
    weights = jax.nn.softmax(query @ keys.T / temperature, axis=-1)  # [B, K]
    mixed = jnp.einsum("bk,kpd->bpd", weights, candidates)
    return (target[None] + mixed).astype(self.dtype)
