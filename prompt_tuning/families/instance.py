"""Instance-wise prompts: a small trainable generator makes each example's prompt from that example.

`InstancePrompt` (the `PROMPT` of `prompts.PromptedInputs`) holds a task prompt `prompt` [P_t, d] (same path
as plain prompt tuning: `encoder/prompt/prompt/prompt`) and a `generator` whose [B, P_i, d] output is added to
it (`combine="add"`, P_i = P_t) or placed after it (`"concat"`, P = P_t + P_i). Generators:

* `PooledGenerator(source="embeddings")` — IDPG (Wu et al. 2022, arXiv 2204.04497): mean of the frozen input
  embeddings over real tokens -> bottleneck MLP (optionally PHM-factorised weights) -> P_i x d.
* `PooledGenerator(source="encoder")` — the same from a first pass of the frozen encoder (needs
  `PromptFamily.encoder_first_pass = True`): one more encoder forward per example, richer features
  (IPT, Jiang et al. 2022, arXiv 2206.01958, sentence-level).
* `TokenQueryGenerator` — token level (IPT): P_i learned queries attend over the input embeddings through
  low-rank projections; each prompt position is its own mixture of the example's tokens.

Generators ignore padding (pooling and attention only see tokens > 0) and their output layer starts at zero,
so training starts from plain prompt tuning ("add") or from a zero instance part ("concat").
"""
from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import prompts

Array = jax.Array
Initializer = Callable[..., Array]
ACTIVATIONS = {"relu": nn.relu, "tanh": jnp.tanh, "gelu": nn.gelu}
COMBINES = ("add", "concat")


def _partitioned(init: Initializer, *axes: str | None) -> Initializer:
  return nn.with_logical_partitioning(init, axes)


class PHMDense(nn.Module):
  """A dense layer whose kernel is a sum of `n` Kronecker products, sum_i A_i (x) B_i (PHM, Zhang et al. 2021).

  Parameters: `phm_rule` [n, n, n] and `kernel` [n, in/n, out/n] (+ `bias` [out]): about 1/n of a dense kernel.
  """

  features: int
  n: int
  kernel_init: Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d_in = x.shape[-1]
    if d_in % self.n or self.features % self.n:
      raise ValueError(f"PHM with n={self.n} needs input ({d_in}) and output ({self.features}) widths divisible "
                       f"by n; change `phm` or the bottleneck size.")
    rule = self.param("phm_rule", _partitioned(nn.initializers.normal(1.0 / self.n), None, None, None),
                      (self.n, self.n, self.n), jnp.float32)
    factors = self.param("kernel", _partitioned(self.kernel_init, None, "prompt_embed", "prompt_mlp"),
                         (self.n, d_in // self.n, self.features // self.n), jnp.float32)
    kernel = jnp.einsum("iab,icd->acbd", rule, factors).reshape(d_in, self.features)
    bias = self.param("bias", _partitioned(nn.initializers.zeros, "prompt_mlp"), (self.features,), jnp.float32)
    return x @ kernel + bias


def _dense(features: int, phm: int, name: str, zero: bool = False) -> nn.Module:
  init = nn.initializers.zeros if zero else nn.initializers.lecun_normal()
  if phm > 1:
    return PHMDense(features, phm, kernel_init=init, name=name)
  return nn.Dense(features, kernel_init=_partitioned(init, "prompt_embed", "prompt_mlp"),
                  bias_init=_partitioned(nn.initializers.zeros, "prompt_mlp"), name=name)


def masked_mean(x: Array, tokens: Array) -> Array:
  """[B, T, d] -> [B, d]: mean over positions with token > 0 (zeros for an all-padding row)."""
  valid = (tokens > 0).astype(jnp.float32)[..., None]
  return jnp.sum(x.astype(jnp.float32) * valid, axis=1) / jnp.maximum(jnp.sum(valid, axis=1), 1.0)


class PooledGenerator(nn.Module):
  """Pooled example features -> `hidden_dim` bottleneck -> `length` x d prompt (IDPG; `source="encoder"`: IPT).

  `phm > 1` factorises both weights with PHM layers of `phm` components (IDPG's parameter saving).
  """

  length: int = 10
  hidden_dim: int = 64
  source: str = "embeddings"
  phm: int = 0
  activation: str = "relu"

  @nn.compact
  def __call__(self, tokens: Array, embedded: Array, first_pass: Array | None = None, **unused: Any) -> Array:
    if self.source not in ("embeddings", "encoder"):
      raise ValueError(f"PooledGenerator.source={self.source!r}; choose 'embeddings' or 'encoder'.")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"Unknown activation {self.activation!r}; choose one of {sorted(ACTIVATIONS)}.")
    if self.source == "encoder":
      if first_pass is None:
        raise ValueError("PooledGenerator(source='encoder') reads the frozen encoder's first pass: set "
                         "PromptFamily.encoder_first_pass = True (families/instance_encoder.gin does).")
      features = first_pass
    else:
      features = embedded
    d = embedded.shape[-1]
    h = ACTIVATIONS[self.activation](_dense(self.hidden_dim, self.phm, "down")(masked_mean(features, tokens)))
    out = _dense(self.length * d, self.phm, "up", zero=True)(h)
    return out.reshape(-1, self.length, d)


class TokenQueryGenerator(nn.Module):
  """`length` learned queries attend (one head of width `hidden_dim`) over the example's input embeddings."""

  length: int = 10
  hidden_dim: int = 64

  @nn.compact
  def __call__(self, tokens: Array, embedded: Array, **unused: Any) -> Array:
    d = embedded.shape[-1]
    queries = self.param("queries", _partitioned(nn.initializers.normal(1.0), "prompt", "prompt_embed"),
                         (self.length, d), jnp.float32)
    x = embedded.astype(jnp.float32)
    q = _dense(self.hidden_dim, 0, "query")(queries)  # [P, r]
    k = _dense(self.hidden_dim, 0, "key")(x)  # [B, T, r]
    v = _dense(self.hidden_dim, 0, "value")(x)
    logits = jnp.einsum("pr,btr->bpt", q, k) / math.sqrt(self.hidden_dim)
    logits = jnp.where((tokens > 0)[:, None, :], logits, -1e10)
    mixed = jnp.einsum("bpt,btr->bpr", jax.nn.softmax(logits, axis=-1), v)
    return _dense(d, 0, "out", zero=True)(mixed)


class InstancePrompt(nn.Module):
  """Task prompt `prompt` [task_length, d] combined with the generator's per-example prompt -> [B, P, d]."""

  generator: nn.Module
  task_length: int = 10
  combine: str = "add"
  initializer: Initializer = prompts.random_uniform()
  dtype: Any = jnp.float32

  def __post_init__(self):
    if self.combine not in COMBINES:
      raise ValueError(f"Unknown InstancePrompt.combine {self.combine!r}; choose one of {COMBINES}.")
    if self.combine == "add" and self.task_length != self.generator.length:
      raise ValueError(f"combine='add' needs equal lengths: task prompt {self.task_length}, generator "
                       f"{self.generator.length}.")
    super().__post_init__()

  @property
  def length(self) -> int:
    return self.task_length + (self.generator.length if self.combine == "concat" else 0)

  @nn.compact
  def __call__(self, tokens: Array, embedded: Array, **prompt_inputs: Array) -> Array:
    task = self.param("prompt", nn.with_logical_partitioning(self.initializer, prompts.PROMPT_AXES),
                      (self.task_length, embedded.shape[-1]), jnp.float32)
    instance = self.generator(tokens, embedded, **prompt_inputs)
    task = jnp.broadcast_to(task[None], (instance.shape[0],) + task.shape)
    out = task + instance if self.combine == "add" else jnp.concatenate([task, instance], axis=1)
    return out.astype(self.dtype)
