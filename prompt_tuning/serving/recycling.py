"""Prompt recycling (Lester et al. 2022, arXiv 2208.05577): move a prompt trained on one frozen model to another.

A recycler learns a map from the source model's word embeddings to the target model's, on a support set of
vocabulary entries that both share, then applies it to the prompt:

  v2v-lin   a linear map W fitted by least squares (source rows @ W ≈ target rows); prompt @ W
  v2v-nn    a two-layer ReLU MLP (hidden = `hidden_scale` × target width) fitted with Adam on the mean L2 loss
  lin-comb  the prompt written as a least-squares combination of the source support rows; the same combination
            of the target support rows

The support is `num_words` vocabulary ids after skipping `word_offset` (the paper: 4,000 after 1,000) from a word
list (a JSON id→word mapping such as the reference's English-only list, or a JSON list of ids), or from the
vocabulary's own order without a list. CLI: `python -m prompt_tuning.scripts.recycle_prompt`.
"""
from __future__ import annotations

import json
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

RECYCLERS = ("v2v-nn", "v2v-lin", "lin-comb")


def support_ids(vocab_rows: int, num_words: int = 4000, word_offset: int = 1000,
                word_list: str | None = None) -> np.ndarray:
  """The vocabulary ids the recycler is fitted on, in the word list's order (or the vocabulary's)."""
  if num_words <= 0 or word_offset < 0:
    raise ValueError(f"--num_words={num_words} must be positive and --word_offset={word_offset} non-negative.")
  if word_list is None:
    ids = np.arange(vocab_rows)
  else:
    entries = json.loads(epath.Path(word_list).read_text())
    ids = np.asarray([int(k) for k in (entries.keys() if isinstance(entries, dict) else entries)], np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_rows):
      raise ValueError(f"Word list {word_list} has ids outside the embedding table's {vocab_rows} rows.")
  if word_offset + num_words > len(ids):
    raise ValueError(f"--word_offset={word_offset} + --num_words={num_words} exceeds the {len(ids)} words "
                     f"available ({word_list or 'the vocabulary'}); lower one of them.")
  return ids[word_offset:word_offset + num_words]


def _lstsq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  return np.linalg.lstsq(a.astype(np.float64), b.astype(np.float64), rcond=None)[0]


class LinearRecycler:
  """v2v-lin: W = argmin ‖source @ W − target‖²."""

  def fit(self, source: np.ndarray, target: np.ndarray, **unused: Any) -> "LinearRecycler":
    self.projection = _lstsq(source, target)
    return self

  def __call__(self, prompt: np.ndarray) -> np.ndarray:
    return (prompt.astype(np.float64) @ self.projection).astype(np.float32)


class LinearCombinationRecycler:
  """lin-comb: prompt ≈ X @ source (least squares, minimum norm), recycled as X @ target."""

  def fit(self, source: np.ndarray, target: np.ndarray, **unused: Any) -> "LinearCombinationRecycler":
    self.source, self.target = source, target
    return self

  def __call__(self, prompt: np.ndarray) -> np.ndarray:
    weights = _lstsq(self.source.T, prompt.T)  # [support, P]
    return (weights.T @ self.target.astype(np.float64)).astype(np.float32)


class _ReluMLP(nn.Module):
  hidden: int
  output: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Dense(self.output)(nn.relu(nn.Dense(self.hidden)(x)))


class MLPRecycler:
  """v2v-nn: an expand-and-contract ReLU MLP fitted with Adam (batches drawn from a seeded shuffle per epoch)."""

  def __init__(self, hidden_scale: int = 4, seed: int = 0):
    if hidden_scale <= 0:
      raise ValueError(f"--hidden_scale={hidden_scale} must be positive.")
    self.hidden_scale, self.seed = hidden_scale, seed

  def fit(self, source: np.ndarray, target: np.ndarray, batch_size: int = 50, epochs: int = 25,
          learning_rate: float = 3e-4) -> "MLPRecycler":
    self.mlp = _ReluMLP(self.hidden_scale * target.shape[1], target.shape[1])
    key, shuffle_key = jax.random.split(jax.random.PRNGKey(self.seed))
    params = self.mlp.init(key, jnp.zeros((1, source.shape[1])))
    tx = optax.adam(learning_rate)
    opt_state = tx.init(params)
    loss = lambda p, x, y: jnp.mean(optax.l2_loss(self.mlp.apply(p, x), y))

    @jax.jit
    def step(params, opt_state, x, y):
      grads = jax.grad(loss)(params, x, y)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    source, target = jnp.asarray(source, jnp.float32), jnp.asarray(target, jnp.float32)
    for _ in range(epochs):
      shuffle_key, key = jax.random.split(shuffle_key)
      order = jax.random.permutation(key, source.shape[0])
      for i in range(0, source.shape[0], batch_size):
        rows = order[i:i + batch_size]
        params, opt_state = step(params, opt_state, source[rows], target[rows])
    self.params = params
    self.final_loss = float(loss(params, source, target))
    return self

  def __call__(self, prompt: np.ndarray) -> np.ndarray:
    return np.asarray(self.mlp.apply(self.params, jnp.asarray(prompt, jnp.float32)), np.float32)


def make_recycler(name: str, hidden_scale: int = 4) -> Any:
  factories: dict[str, Callable[[], Any]] = {"v2v-lin": LinearRecycler, "lin-comb": LinearCombinationRecycler,
                                             "v2v-nn": lambda: MLPRecycler(hidden_scale)}
  if name not in factories:
    raise ValueError(f"--recycler={name!r} is not one of {list(RECYCLERS)}.")
  return factories[name]()


def recycle_prompt(prompt: np.ndarray, source_table: np.ndarray, target_table: np.ndarray, ids: np.ndarray,
                   recycler: str = "v2v-nn", hidden_scale: int = 4, **fit_kwargs: Any) -> np.ndarray:
  """The `[P, d_target]` recycled prompt of a `[P, d_source]` prompt."""
  if prompt.ndim != 2 or prompt.shape[1] != source_table.shape[1]:
    raise ValueError(f"The prompt has shape {prompt.shape} but the source model's embeddings are "
                     f"{source_table.shape[1]} wide; pass the model the prompt was trained on as the source.")
  fitted = make_recycler(recycler, hidden_scale).fit(source_table[ids], target_table[ids], **fit_kwargs)
  return fitted(prompt)
