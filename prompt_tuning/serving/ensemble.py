"""Prompt ensembling (Lester et al. 2021, §6): N prompts for one task, evaluated in one batched forward pass.

Each example is repeated once per prompt and row j of the repeat uses prompt j of an unnamed `PromptBank`
(`serving/ensemble.gin`). Generation takes the majority vote of the N decodes; rank classification averages
the N scores.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from prompt_tuning.runtime.models import Batch, EncoderDecoderModel, Params
from prompt_tuning.serving import prompt_bank

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


class PromptEnsembleModel(EncoderDecoderModel):
  """`model` with an ensemble of its bank's prompts for scoring and decoding (training is unchanged)."""

  def __init__(self, model: EncoderDecoderModel):
    vars(self).update(vars(model))  # the same module, vocabularies, decoding and loss settings
    bank = prompt_bank.find_bank(model.module)
    if bank is None or bank.task_names:
      raise ValueError("PromptEnsembleModel needs a model prompted by a PromptBank holding a list of prompts "
                       "(serving/ensemble.gin with ENSEMBLE_PROMPTS = ['a.npy', 'b.npy', ...]).")
    self.num_prompts = bank.num_prompts

  def _expand(self, batch: Batch) -> dict[str, Array]:
    """Each example repeated `num_prompts` times, row j of a repeat tagged with prompt j."""
    if prompt_bank.TASK_IDS in batch:
      raise ValueError("A prompt ensemble serves one task; its batches must not carry task_ids.")
    n = self.num_prompts
    rows = {k: jnp.repeat(v, n, axis=0) for k, v in batch.items()}
    rows[prompt_bank.TASK_IDS] = jnp.tile(jnp.arange(n, dtype=jnp.int32), batch["encoder_input_tokens"].shape[0])
    return rows

  def score_batch(self, params: Params, batch: Batch) -> Array:
    """[B] the members' summed target log-likelihoods, averaged."""
    scores = super().score_batch(params, self._expand(batch))
    return scores.reshape(-1, self.num_prompts).mean(axis=1)

  def predict_batch_with_aux(self, params: Params, batch: Batch, rng: Array | None = None,
                             decoder_params: Mapping[str, Any] | None = None,
                             return_all_decodes: bool = False,
                             num_decodes: int | None = None) -> tuple[Array, dict[str, Array]]:
    """The majority-vote decode per example; its score is the mean score of the members that produced it."""
    if return_all_decodes:
      raise ValueError("A prompt ensemble returns one decode per example; leave return_all_decodes=False.")
    decodes, aux = super().predict_batch_with_aux(params, self._expand(batch), rng, decoder_params,
                                                  num_decodes=num_decodes)
    n = self.num_prompts
    eos_id = getattr(self.output_vocabulary, "eos_id", None) or 1
    best, agree = majority_vote(decodes.reshape(-1, n, decodes.shape[-1]), eos_id)
    scores = aux["scores"].reshape(-1, n)
    return best, {"scores": jnp.sum(scores * agree, axis=1) / jnp.sum(agree, axis=1)}
