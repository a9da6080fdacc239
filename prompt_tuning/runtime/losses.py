"""Token cross entropy with T5X semantics: token sum, z-loss, label smoothing, loss normalizing factors.

All maths runs in float32 whatever the logits dtype. With `loss_normalizing_factor=None` the loss is the
SUM over weighted tokens (T5X default), not a mean.
"""
from __future__ import annotations

import enum
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class SpecialLossNormalizingFactor(enum.Enum):
  """Loss normalizing factors derived from the batch instead of given as a number.

  NUM_REAL_TARGET_TOKENS: divide by the sum of the loss weights (non-padding targets).
  NUM_TOTAL_TARGET_TOKENS: divide by batch * target length, padding included.
  AVERAGE_PER_SEQUENCE: weight each token by 1 / (its sequence's weight sum), then divide by the sum of those
    weights, so every sequence counts the same whatever its length.
  """
  NUM_REAL_TARGET_TOKENS = 1
  NUM_TOTAL_TARGET_TOKENS = 2
  AVERAGE_PER_SEQUENCE = 3


LossNormalizingFactor = float | int | str | SpecialLossNormalizingFactor | None


# ----------------------------------------------------------------------------------------------------------
# Cross entropy with a hand-written gradient.


def _cross_entropy_forward(logits: Array, targets: Array, z_loss: Array):
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  log_softmax = logits - log_z[..., None]
  z_term = z_loss * jnp.square(log_z)
  loss = -jnp.sum(targets.astype(jnp.float32) * log_softmax, axis=-1) + z_term
  return (loss, z_term), (log_softmax, log_z)


@jax.custom_vjp
def cross_entropy_with_logits(logits: Array, targets_onehot: Array, z_loss: float) -> tuple[Array, Array]:
  """Per-token `-Σ targets·log_softmax(logits) + z_loss·logsumexp(logits)²` and the z-loss term alone.

  Args:
    logits: [..., V] float array.
    targets_onehot: [..., V] (soft) target distribution; each row should sum to 1.
    z_loss: coefficient of the auxiliary z-loss. It receives no gradient.

  Returns:
    (loss, z_loss_term), both float32 of shape [...]. The second output is for logging: gradients flow only
    through the first one.
  """
  return _cross_entropy_forward(logits, targets_onehot, z_loss)[0]


def _cross_entropy_fwd(logits, targets_onehot, z_loss):
  outputs, (log_softmax, log_z) = _cross_entropy_forward(logits, targets_onehot, z_loss)
  dtypes = (jnp.zeros((), logits.dtype), jnp.zeros((), targets_onehot.dtype))
  return outputs, (log_softmax, log_z, targets_onehot, jnp.asarray(z_loss), dtypes)


def _cross_entropy_bwd(residuals, cotangents):
  log_softmax, log_z, targets_onehot, z_loss, (logits_proto, targets_proto) = residuals
  g = cotangents[0][..., None]  # The z-loss output is a logging copy: its cotangent is ignored.
  scale = (1.0 + 2.0 * z_loss * log_z)[..., None]
  d_logits = g * (scale * jnp.exp(log_softmax) - targets_onehot.astype(jnp.float32))
  d_targets = -g * log_softmax
  return (d_logits.astype(logits_proto.dtype), d_targets.astype(targets_proto.dtype), jnp.zeros_like(z_loss))


cross_entropy_with_logits.defvjp(_cross_entropy_fwd, _cross_entropy_bwd)


# ----------------------------------------------------------------------------------------------------------
# Loss normalizing factors.


def _as_special_factor(value: str | SpecialLossNormalizingFactor) -> SpecialLossNormalizingFactor:
  if isinstance(value, SpecialLossNormalizingFactor):
    return value
  try:
    return SpecialLossNormalizingFactor[value.upper()]
  except KeyError:
    valid = ", ".join(repr(f.name) for f in SpecialLossNormalizingFactor)
    raise ValueError(f"Unknown loss_normalizing_factor {value!r}; use a number, None, or one of "
                     f"{valid}.") from None


def _per_segment_weight_sums(segment_ids: Array, weights: Array) -> Array:
  """For each token, the weight sum of its packed segment (segment ids must be distinct within a row)."""

  def row(seg, w):
    sums = jax.ops.segment_sum(w, seg, num_segments=seg.shape[0] + 1)
    return sums[seg]

  return jax.vmap(row)(segment_ids.astype(jnp.int32), weights)


def get_loss_normalizing_factor_and_weights(
    loss_normalizing_factor: LossNormalizingFactor, batch: Mapping[str, Array]
) -> tuple[float | Array | None, Array | None]:
  """Resolves `loss_normalizing_factor` to a number (or None) and the per-token loss weights to use.

  A number or None passes through with `batch['decoder_loss_weights']` (None if absent). A special factor
  (enum or its name, any case) is computed from the batch; missing loss weights then default to
  `decoder_target_tokens > 0`. For AVERAGE_PER_SEQUENCE on packed batches, `decoder_segment_ids` delimit the
  sequences.
  """
  weights = batch.get("decoder_loss_weights")
  if not isinstance(loss_normalizing_factor, (str, SpecialLossNormalizingFactor)):
    return loss_normalizing_factor, weights
  special = _as_special_factor(loss_normalizing_factor)
  targets = batch["decoder_target_tokens"]
  if weights is None:
    weights = (targets > 0).astype(jnp.float32)
  weights = jnp.asarray(weights, jnp.float32)
  if special is SpecialLossNormalizingFactor.NUM_REAL_TARGET_TOKENS:
    return jnp.sum(weights), weights
  if special is SpecialLossNormalizingFactor.NUM_TOTAL_TARGET_TOKENS:
    return float(np.prod(targets.shape)), weights
  segment_ids = batch.get("decoder_segment_ids")
  if segment_ids is None:
    per_sequence = jnp.sum(weights, axis=-1, keepdims=True)
  else:
    per_sequence = _per_segment_weight_sums(segment_ids, weights)
  weights = jnp.nan_to_num(weights / per_sequence, nan=0.0, posinf=0.0, neginf=0.0)
  return jnp.sum(weights), weights


# ----------------------------------------------------------------------------------------------------------
# Weighted loss, metrics and scores.


def compute_weighted_cross_entropy(
    logits: Array,
    targets: Array,
    weights: Array | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    loss_normalizing_factor: LossNormalizingFactor = None,
) -> tuple[Array, Array, Array]:
  """Label-smoothed cross entropy plus z-loss, weighted and SUMMED over all tokens.

  Args:
    logits: [B, L, V] float array.
    targets: [B, L] int token ids.
    weights: optional [B, L] loss weights (0 on padding).
    label_smoothing: in [0, 1); the target gets `1 - label_smoothing`, the other V-1 ids share the rest.
      The entropy of that smoothed target is subtracted, so a perfect prediction has loss 0.
    z_loss: coefficient of `logsumexp(logits)²`.
    loss_normalizing_factor: None (plain sum), a number to divide by, or a `SpecialLossNormalizingFactor`
      (or its name), which may also replace the weights.

  Returns:
    (loss, z_loss_sum, weight_sum): float32 scalars; weight_sum is the sum of the weights used, or B·L.
  """
  if logits.ndim != targets.ndim + 1:
    raise ValueError(f"logits must have one more dim than targets; got logits {logits.shape}, "
                     f"targets {targets.shape}.")
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1); got {label_smoothing}.")
  if isinstance(loss_normalizing_factor, (str, SpecialLossNormalizingFactor)):
    batch = {"decoder_target_tokens": targets}
    if weights is not None:
      batch["decoder_loss_weights"] = weights
    loss_normalizing_factor, weights = get_loss_normalizing_factor_and_weights(loss_normalizing_factor, batch)

  vocab_size = logits.shape[-1]
  confidence = jnp.float32(1.0 - label_smoothing)
  low_confidence = (1.0 - confidence) / (vocab_size - 1)
  normalizing_constant = -(confidence * jnp.log(confidence) +
                           (vocab_size - 1) * low_confidence * jnp.log(low_confidence + 1e-20))
  soft_targets = jnp.where(targets[..., None] == jnp.arange(vocab_size), confidence, low_confidence)
  token_loss, token_z_loss = cross_entropy_with_logits(logits, soft_targets, z_loss)
  token_loss = token_loss - normalizing_constant

  if weights is None:
    weight_sum = jnp.float32(np.prod(targets.shape))
  else:
    weights = jnp.asarray(weights, jnp.float32)
    token_loss = token_loss * weights
    token_z_loss = token_z_loss * weights
    weight_sum = jnp.sum(weights)
  if loss_normalizing_factor is not None:
    token_loss = token_loss / loss_normalizing_factor
    token_z_loss = token_z_loss / loss_normalizing_factor
  return jnp.sum(token_loss), jnp.sum(token_z_loss), weight_sum


def compute_base_metrics(
    logits: Array, targets: Array, weights: Array | None, loss: Array, z_loss: Array | None
) -> dict[str, Array]:
  """One batch's T5X training metrics as float32 scalars (the `train/` names, without timing).

  `loss` and `z_loss` are the summed values returned by `compute_weighted_cross_entropy`. Per-token ratios
  use the weight sum (non-padding) or the full B·L token count; accuracy is the weighted argmax accuracy.
  The z-loss entries are left out when `z_loss` is None.
  """
  num_tokens = jnp.float32(targets.size)
  mask = jnp.ones(targets.shape, jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
  nonpadding_tokens = jnp.sum(mask)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  loss = jnp.asarray(loss, jnp.float32)
  metrics = {
      "accuracy": jnp.sum(correct * mask) / nonpadding_tokens,
      "loss": loss,
      "loss_per_nonpadding_target_token": loss / nonpadding_tokens,
      "loss_per_all_target_tokens": loss / num_tokens,
      "non_padding_fraction/loss_weights": nonpadding_tokens / num_tokens,
  }
  if z_loss is not None:
    z_loss = jnp.asarray(z_loss, jnp.float32)
    metrics.update({
        "z_loss": z_loss,
        "z_loss_per_all_target_tokens": z_loss / num_tokens,
        "cross_ent_loss": loss - z_loss,
        "cross_ent_loss_per_all_target_tokens": (loss - z_loss) / num_tokens,
    })
  return metrics


def token_log_likelihoods(logits: Array, targets: Array, weights: Array | None = None) -> Array:
  """Per-sequence `Σ_t log_softmax(logits)[target_t] · weight_t`, shape [B]; no z-loss, no smoothing."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  token_scores = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  if weights is not None:
    token_scores = token_scores * jnp.asarray(weights, jnp.float32)
  return jnp.sum(token_scores, axis=tuple(range(1, token_scores.ndim)))
