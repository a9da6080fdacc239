"""Prompt ensembling (Lester et al. 2021, §6): N prompts for one task, evaluated in one batched forward pass.

Each example is repeated once per prompt and row j of the repeat uses prompt j of an unnamed `PromptBank`
(`serving/ensemble.gin`: the family's prompt is the bank, its inference hooks are `PromptEnsemble`). Generation
takes the majority vote of the N decodes; rank classification averages the N scores.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from prompt_tuning.family import TASK_IDS

Array = jax.Array


def majority_vote(decodes: Array, eos_id: int) -> tuple[Array, Array]:
  """Per example, the decode most members produced (ties: the earliest member) and who agreed with it.

  `decodes` is `[B, N, L]`; tokens after the first EOS do not count. Returns the winner `[B, L]` (cut after
  its EOS) and the agreement mask `[B, N]`.
  """
  is_eos = decodes == eos_id
  after_eos = (jnp.cumsum(is_eos, axis=-1) - is_eos) > 0
  clean = jnp.where(after_eos, 0, decodes)
  same = jnp.all(clean[:, :, None, :] == clean[:, None, :, :], axis=-1)  # [B, N, N]
  winner = jnp.argmax(same.sum(axis=-1), axis=-1)  # first member with the most votes
  rows = jnp.arange(decodes.shape[0])
  return clean[rows, winner], same[rows, winner]


class PromptEnsemble:
  """`PromptFamily.inference` hooks: every example scored and decoded once per prompt of an unnamed bank.

  Row j of each example's repeat carries task id j (prompt j); scores are averaged, decodes take the majority
  vote (its score is the mean score of the members that produced it). Training is unchanged.
  """

  def __init__(self, prompts: Sequence[Any]):
    if isinstance(prompts, Mapping) or isinstance(prompts, str) or not prompts:
      raise ValueError("A prompt ensemble needs a list of prompts (serving/ensemble.gin with ENSEMBLE_PROMPTS = "
                       f"['a.npy', 'b.npy', ...]); got {prompts!r}.")
    self.num_prompts = len(prompts)

  def expand_batch(self, batch: Mapping[str, Array]) -> dict[str, Array]:
    """Each example repeated `num_prompts` times, row j of a repeat tagged with prompt j."""
    if TASK_IDS in batch:
      raise ValueError("A prompt ensemble serves one task; its batches must not carry task_ids.")
    n = self.num_prompts
    rows = {k: jnp.repeat(v, n, axis=0) for k, v in batch.items()}
    rows[TASK_IDS] = jnp.tile(jnp.arange(n, dtype=jnp.int32), batch["decoder_target_tokens"].shape[0])
    return rows

  def reduce_scores(self, scores: Array) -> Array:
    """[B] the members' summed target log-likelihoods, averaged."""
    return scores.reshape(-1, self.num_prompts).mean(axis=1)

  def reduce_decodes(self, decodes: Array, scores: Array, eos_id: int) -> tuple[Array, Array]:
    """The majority-vote decode per example and the mean score of the members that produced it."""
    n = self.num_prompts
    best, agree = majority_vote(decodes.reshape(-1, n, decodes.shape[-1]), eos_id)
    scores = scores.reshape(-1, n)
    return best, jnp.sum(scores * agree, axis=1) / jnp.sum(agree, axis=1)
