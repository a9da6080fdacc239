"""The model wrapper (T5X `EncoderDecoderModel`): loss, per-example scores and decoding around a flax module."""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, Mapping

import jax
import jax.numpy as jnp

from prompt_tuning.models.t5 import EncoderDecoder
from prompt_tuning.runtime import decoding, losses

if TYPE_CHECKING:
  import seqio

Array = jax.Array
Batch = Mapping[str, Array]
Params = Mapping[str, Any]
# Batch features handed to the prompt module (e.g. a task id per example for mixed-task batches).
PROMPT_FEATURES = ("task_ids",)


def prompt_inputs(batch: Batch) -> dict[str, Array]:
  return {k: batch[k] for k in PROMPT_FEATURES if k in batch}


class _SeqioEncDecConverter:
  """`seqio.EncDecFeatureConverter`, looked up on first use: importing the model does not import TensorFlow."""

  def __get__(self, obj: Any, owner: type | None = None) -> type:
    import seqio  # pylint: disable=import-outside-toplevel
    return seqio.EncDecFeatureConverter


class EncoderDecoderModel:
  """Computes T5X's token-summed cross-entropy (+ z-loss), rank-classification scores and predictions.

  Feature names follow `seqio.EncDecFeatureConverter`: `encoder_input_tokens`, `decoder_input_tokens`,
  `decoder_target_tokens`, `decoder_loss_weights`.
  """

  FEATURE_CONVERTER_CLS: Any = _SeqioEncDecConverter()  # an instance may set its own (multi-task ids)

  def __init__(self, module: EncoderDecoder, input_vocabulary: seqio.Vocabulary | None = None,
               output_vocabulary: seqio.Vocabulary | None = None,
               decode_fn: Callable[..., tuple[Array, Array]] = decoding.beam_search,
               label_smoothing: float = 0.0, z_loss: float = 1e-4,
               loss_normalizing_factor: float | str | None = None,
               default_decoder_params: Mapping[str, Any] | None = None):
    self.module = module
    self.input_vocabulary = input_vocabulary
    self.output_vocabulary = output_vocabulary or input_vocabulary
    self.decode_fn = decode_fn
    self.label_smoothing = label_smoothing
    self.z_loss = z_loss
    self.loss_normalizing_factor = loss_normalizing_factor
    self.default_decoder_params = dict(default_decoder_params or {})
    if "num_decodes" not in self.default_decoder_params:
      self.default_decoder_params["num_decodes"] = 1  # T5X's DecoderParams default

  # ------------------------------------------------------------------------------------------- parameters
  def get_initial_variables(self, rng: Array, input_shapes: Mapping[str, tuple[int, ...]]) -> dict:
    """Boxed variables (with logical axes) for inputs of the given shapes; used under `jax.eval_shape` too."""
    enc = jnp.ones(input_shapes["encoder_input_tokens"], jnp.int32)
    dec = jnp.ones(input_shapes["decoder_input_tokens"], jnp.int32)
    return self.module.init(rng, enc, dec, dec, enable_dropout=False)

  # ------------------------------------------------------------------------------------------------- loss
  def compute_logits(self, params: Params, batch: Batch, dropout_rng: Array | None = None) -> Array:
    rngs = None if dropout_rng is None else {"dropout": dropout_rng}
    return self.module.apply({"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                             batch["decoder_target_tokens"], enable_dropout=dropout_rng is not None, rngs=rngs,
                             prompt_inputs=prompt_inputs(batch))

  def loss_fn(self, params: Params, batch: Batch, dropout_rng: Array | None) -> tuple[Array, dict[str, Array]]:
    """Summed (or normalised) cross-entropy over target tokens, and T5X's base metrics."""
    logits = self.compute_logits(params, batch, dropout_rng)
    factor, weights = losses.get_loss_normalizing_factor_and_weights(self.loss_normalizing_factor, batch)
    loss, z_loss, _ = losses.compute_weighted_cross_entropy(
        logits, batch["decoder_target_tokens"], weights, self.label_smoothing, self.z_loss, factor)
    metrics = losses.compute_base_metrics(logits, batch["decoder_target_tokens"], weights, loss, z_loss)
    return loss, metrics

  def score_batch(self, params: Params, batch: Batch) -> Array:
    """[B] summed target log-likelihood (no z-loss, no smoothing): rank classification."""
    logits = self.compute_logits(params, batch)
    weights = batch.get("decoder_loss_weights", batch["decoder_target_tokens"] > 0)
    return losses.token_log_likelihoods(logits, batch["decoder_target_tokens"], weights)

  # ------------------------------------------------------------------------------------------- decoding
  def _init_cache(self, params: Params, batch_size: int, enc_len: int, dec_len: int,
                  inputs_for_prompt: Mapping[str, Array] | None = None) -> Any:
    enc = jnp.ones((batch_size, enc_len), jnp.int32)
    dec = jnp.ones((batch_size, dec_len), jnp.int32)
    _, variables = self.module.apply({"params": params}, enc, dec, dec, decode=True, max_decode_length=dec_len,
                                     prompt_inputs=inputs_for_prompt, mutable=["cache"])
    return variables["cache"]

  def predict_batch_with_aux(self, params: Params, batch: Batch, rng: Array | None = None,
                             decoder_params: Mapping[str, Any] | None = None,
                             return_all_decodes: bool = False,
                             num_decodes: int | None = None) -> tuple[Array, dict[str, Array]]:
    """Decode `decoder_input_tokens.shape[1]` tokens; returns the best (or all) decodes and their scores."""
    enc_tokens = batch["encoder_input_tokens"]
    dec_len = batch["decoder_input_tokens"].shape[1]
    params_dec = {**self.default_decoder_params, **(decoder_params or {})}
    if num_decodes is not None:
      params_dec["num_decodes"] = num_decodes
    n = params_dec["num_decodes"]
    encoded = self.module.apply({"params": params}, enc_tokens, prompt_inputs=prompt_inputs(batch),
                                method=self.module.encode)
    encoded = decoding.flat_batch_beam_expand(encoded, n)
    enc_tokens_n = decoding.flat_batch_beam_expand(enc_tokens, n)
    cache = self._init_cache(params, enc_tokens.shape[0], enc_tokens.shape[1], dec_len, prompt_inputs(batch))

    def tokens_to_logits(state: decoding.DecodingState):
      logits, mutated = self.module.apply(
          {"params": params, "cache": state.cache}, encoded, enc_tokens_n, state.cur_token, None, decode=True,
          max_decode_length=dec_len, method=self.module.decode, mutable=["cache"])
      return logits[:, 0, :], mutated["cache"]

    eos_id = getattr(self.output_vocabulary, "eos_id", None) or 1
    decodes, scores = self.decode_fn(inputs=jnp.zeros_like(batch["decoder_input_tokens"]), cache=cache,
                                     tokens_to_logits=tokens_to_logits, eos_id=eos_id, decode_rng=rng,
                                     **params_dec)
    if return_all_decodes:
      return decodes, {"scores": scores}
    return decodes[:, -1, :], {"scores": scores[:, -1]}

  def predict_batch(self, params: Params, batch: Batch, rng: Array | None = None, **kwargs) -> Array:
    return self.predict_batch_with_aux(params, batch, rng, **kwargs)[0]


def bind_decoding(fn: Callable[..., Any], **kwargs: Any) -> Callable[..., Any]:
  """A decode function with some arguments fixed (e.g. `alpha` for beam search) for gin/Python users."""
  return functools.partial(fn, **kwargs)
