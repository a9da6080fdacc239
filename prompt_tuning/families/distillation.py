"""MPT's source training (Wang et al. 2023, arXiv 2303.02861): distillation from single-task teacher prompts.

`Distillation` is a loss term of the multi-task family (`families/mpt_distill.gin`): the teacher is the same frozen
model whose `MultiTaskInputs` prompt is swapped for `TeacherPrompts` (file k is task k's prompt, of the same total
length as the student's). The term adds `kl_weight * KL(teacher || student)` over target tokens (temperature τ,
scaled by τ²) and `hidden_weight *` the mean squared difference of the encoder outputs over real positions,
summed over examples.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from prompt_tuning import prompts
from prompt_tuning.family import ForwardOutputs, family_of
from prompt_tuning.families.multitask import MultiTaskInputs, lookup
from prompt_tuning.runtime import losses

Array = jax.Array


class TeacherPrompts(nn.Module):
  """Fixed single-task prompts [num_tasks, P, d] loaded from .npy files (one per task id, in order)."""

  files: Sequence[str]

  @property
  def length(self) -> int:
    return _load_teachers(tuple(self.files)).shape[1]

  def __call__(self, tokens: Array, embedded: Array, task_ids: Array | None = None, **unused: Any) -> Array:
    del tokens
    table = jnp.asarray(_load_teachers(tuple(self.files)), embedded.dtype)
    if table.shape[-1] != embedded.shape[-1]:
      raise ValueError(f"Teacher prompts have width {table.shape[-1]}, the model {embedded.shape[-1]}.")
    return lookup(table, task_ids)


@functools.lru_cache(maxsize=4)
def _load_teachers(files: tuple[str, ...]) -> np.ndarray:
  arrays = [np.asarray(prompts.np_load(f)(), np.float32) for f in files]
  shapes = {a.shape for a in arrays}
  if len(shapes) != 1 or len(next(iter(shapes))) != 2:
    raise ValueError(f"Teacher prompts must all be [P, d] arrays of one shape; got {sorted(shapes)} from {files}.")
  return np.stack(arrays)


class Distillation:
  """Loss term: KL towards the teachers' output distributions plus the encoder outputs' mean squared difference.

  Metrics: `distill/kl`, `distill/hidden_mse` and `distill/cross_ent_loss` (the task loss alone).
  """

  def __init__(self, teacher_prompt_files: Sequence[str] = (), kl_weight: float = 1.0, hidden_weight: float = 1.0,
               temperature: float = 1.0):
    if not teacher_prompt_files:
      raise ValueError("Distillation needs TEACHER_PROMPT_FILES: one single-task prompt .npy per task.")
    self.teacher = TeacherPrompts(tuple(teacher_prompt_files))
    _load_teachers(tuple(teacher_prompt_files))  # bad files fail here, before any training
    self.kl_weight, self.hidden_weight, self.temperature = kl_weight, hidden_weight, temperature

  def teacher_module(self, module: nn.Module) -> nn.Module:
    """The same frozen model, its `MultiTaskInputs` prompt swapped for the teachers' prompts, no other hooks."""
    family = family_of(module)
    student = family.prompt() if family.prompt is not None else None
    if not isinstance(student, MultiTaskInputs):
      raise ValueError("MPT distillation needs PROMPT_FACTORY = @multitask.MultiTaskInputs (families/mpt.gin).")
    if self.teacher.length != student.length:
      raise ValueError(f"Teacher prompts have length {self.teacher.length} but the student prompt "
                       f"{student.length}; set PROMPT_LENGTH to the teachers' length.")
    teacher = family.replace(prompt=lambda: student.clone(prompt=self.teacher), stack_hooks={}, loss_terms=(),
                             encoder_first_pass=False)
    return module.clone(family=teacher)

  def __call__(self, model: Any, params: Any, batch: Mapping[str, Array], outputs: ForwardOutputs,
               dropout_rng: Array | None) -> tuple[Array, dict[str, Array]]:
    del dropout_rng
    t_encoded, t_logits = jax.lax.stop_gradient(
        model.compute_outputs(params, batch, None, module=self.teacher_module(model.module)))
    targets = batch["decoder_target_tokens"]
    _, weights = losses.get_loss_normalizing_factor_and_weights(model.loss_normalizing_factor, batch)
    weights = targets > 0 if weights is None else weights
    tau = self.temperature
    kl_tokens = optax.kl_divergence(jax.nn.log_softmax(outputs.logits / tau), jax.nn.softmax(t_logits / tau))
    kl = tau ** 2 * jnp.sum(kl_tokens * weights)
    mask_tokens = model.module.apply({"params": params}, batch["encoder_input_tokens"],
                                     method=lambda m, t: m.encoder.mask_tokens(t))
    valid = (mask_tokens > 0).astype(jnp.float32)[..., None]
    encoded = outputs.encoded.astype(jnp.float32)
    per_example = jnp.sum(jnp.square(encoded - t_encoded.astype(jnp.float32)) * valid, axis=(1, 2)) / jnp.maximum(
        jnp.sum(valid, axis=(1, 2)) * encoded.shape[-1], 1.0)
    hidden = jnp.sum(per_example)
    value = self.kl_weight * kl + self.hidden_weight * hidden
    return value, {"distill/kl": kl, "distill/hidden_mse": hidden, "distill/cross_ent_loss": outputs.loss}
