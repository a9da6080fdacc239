"""Wayward prompts (Khashabi et al. 2022, arXiv 2112.08348): prompt tuning pulled towards a discrete prompt.

The training loss gains `gamma * distance(prompt, target)`, where the target is the frozen embeddings of a task
description's tokens and the prompt starts from the same text (`prompts/from_string.gin`), so the soft prompt
stays near words that describe the task. `distance` is the squared L2 distance summed over the hidden axis and
averaged over prompt rows (the reference's `extended/train/wayward.py`). Select with `families/wayward.gin`.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from prompt_tuning import prompts
from prompt_tuning.family import PROMPT_PATH, ForwardOutputs

Array = jax.Array


def squared_l2_distance(x: Array, y: Array) -> Array:
  """Σ‖x_i − y_i‖² over rows i, divided by the number of rows."""
  return jnp.sum(jnp.square(x - y)) / x.shape[0]


def text_length(vocab: prompts.Vocabulary, text: str) -> int:
  """How many tokens `text` has (no EOS): the prompt length that makes the prompt and its target align."""
  return len(list(vocab.encode(text)))


def embedded_text(embeddings: prompts.ArrayOrLoader, vocab: prompts.Vocabulary, text: str) -> np.ndarray:
  """The target: [tokens of `text`, d] rows of the frozen embedding table."""
  rows = prompts.text_embeddings(embeddings, vocab, text)
  if not len(rows):
    raise ValueError(f"The wayward target text {text!r} has no tokens; set PROMPT_TEXT to a task description.")
  return rows


class WaywardLoss:
  """Loss term `gamma * distance(params[prompt_path], discrete_prompt)` (`PromptFamily.loss_terms`).

  Metrics: `wayward/distance` and `wayward/total_loss` (the task loss plus this term); `loss` stays the task
  loss, as in the reference.
  """

  def __init__(self, discrete_prompt: np.ndarray | Callable[[], np.ndarray], gamma: float = 0.01,
               distance: Callable[[Array, Array], Array] = squared_l2_distance, prompt_path: str = PROMPT_PATH):
    self.discrete_prompt = np.asarray(discrete_prompt() if callable(discrete_prompt) else discrete_prompt, np.float32)
    if gamma < 0:
      raise ValueError(f"WAYWARD_GAMMA={gamma} is negative; it weighs a distance, use a value >= 0 (paper: 0.01).")
    self.gamma, self.distance, self.prompt_path = gamma, distance, prompt_path

  def _prompt(self, params: Mapping[str, Any]) -> Array:
    flat = traverse_util.flatten_dict(params, sep="/")
    if self.prompt_path not in flat:
      found = sorted(k for k in flat if "prompt" in k)
      raise ValueError(f"No parameter {self.prompt_path!r} for the wayward distance (prompt parameters: {found}); "
                       "set wayward.WaywardLoss.prompt_path.")
    prompt = flat[self.prompt_path]
    if prompt.shape != self.discrete_prompt.shape:
      raise ValueError(f"The prompt has shape {tuple(prompt.shape)} but the wayward target "
                       f"{self.discrete_prompt.shape}; set PROMPT_LENGTH = {self.discrete_prompt.shape[0]} "
                       "(families/wayward.gin sets it to the text's length) and use a model of the target's width.")
    return prompt

  def __call__(self, model: Any, params: Any, batch: Mapping[str, Array], outputs: ForwardOutputs,
               dropout_rng: Array | None) -> tuple[Array, dict[str, Array]]:
    del model, batch, dropout_rng
    distance = self.distance(self._prompt(params).astype(jnp.float32), jnp.asarray(self.discrete_prompt))
    value = self.gamma * distance
    return value, {"wayward/distance": distance, "wayward/total_loss": outputs.loss + value}
