"""The model wrapper (T5X `EncoderDecoderModel`): loss, per-example scores and decoding around a flax module.

What the module's prompt family adds (`prompt_tuning.family`) reaches the wrapper through that one object: the
batch features its prompt reads, its extra loss terms and its inference hooks.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

import jax
import jax.numpy as jnp

from prompt_tuning.family import ForwardOutputs, PromptFamily, family_of
from prompt_tuning.models.t5 import EncoderDecoder
from prompt_tuning.runtime import decoding, losses

if TYPE_CHECKING:
  import seqio

Array = jax.Array
Batch = Mapping[str, Array]
Params = Mapping[str, Any]


class _FamilyFeatureConverter:
  """`seqio.EncDecFeatureConverter`, passing the family's batch features through; looked up on first use, so
  importing the model does not import TensorFlow."""

  def __get__(self, obj: Any, owner: type | None = None) -> Callable[..., Any]:
    from prompt_tuning.runtime import feature_converters  # pylint: disable=import-outside-toplevel
    features = family_of(obj.module).batch_features if obj is not None else ()
    return feature_converters.enc_dec_converter(features)


class EncoderDecoderModel:
  """Computes T5X's token-summed cross-entropy (+ z-loss), rank-classification scores and predictions.

  Feature names follow `seqio.EncDecFeatureConverter`: `encoder_input_tokens`, `decoder_input_tokens`,
  `decoder_target_tokens`, `decoder_loss_weights`.
  """

  FEATURE_CONVERTER_CLS: Any = _FamilyFeatureConverter()  # an instance may set its own

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

  @property
  def family(self) -> PromptFamily:
    return family_of(self.module)

  def prompt_inputs(self, batch: Batch) -> dict[str, Array]:
    """The batch features the family's prompt reads (e.g. task ids)."""
    return self.family.prompt_inputs(batch)

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
                             prompt_inputs=self.prompt_inputs(batch))

  def compute_outputs(self, params: Params, batch: Batch, dropout_rng: Array | None = None,
                      module: EncoderDecoder | None = None) -> tuple[Array, Array]:
    """(encoder outputs, logits) of `module` (default: this model's), for loss terms that read both."""
    module = module or self.module
    rngs = None if dropout_rng is None else {"dropout": dropout_rng}
    return module.apply({"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                        batch["decoder_target_tokens"], dropout_rng is not None, family_of(module).prompt_inputs(batch),
                        method=module.forward, rngs=rngs)

  def task_loss(self, logits: Array, batch: Batch) -> tuple[Array, dict[str, Array]]:
    """Summed (or normalised) cross-entropy over target tokens, and T5X's base metrics."""
    factor, weights = losses.get_loss_normalizing_factor_and_weights(self.loss_normalizing_factor, batch)
    loss, z_loss, _ = losses.compute_weighted_cross_entropy(
        logits, batch["decoder_target_tokens"], weights, self.label_smoothing, self.z_loss, factor)
    metrics = losses.compute_base_metrics(logits, batch["decoder_target_tokens"], weights, loss, z_loss)
    return loss, metrics

  def loss_fn(self, params: Params, batch: Batch, dropout_rng: Array | None) -> tuple[Array, dict[str, Array]]:
    """The task loss plus the family's loss terms (each adds its value and its metrics)."""
    terms = self.family.loss_terms
    if not terms:
      return self.task_loss(self.compute_logits(params, batch, dropout_rng), batch)
    encoded, logits = self.compute_outputs(params, batch, dropout_rng)
    loss, metrics = self.task_loss(logits, batch)
    outputs, total = ForwardOutputs(encoded, logits, loss), loss
    for term in terms:
      value, extra = term(self, params, batch, outputs, dropout_rng)
      total, metrics = total + value, {**metrics, **extra}
    return total, metrics

  def score_batch(self, params: Params, batch: Batch) -> Array:
    """[B] summed target log-likelihood (no z-loss, no smoothing): rank classification."""
    hooks = self.family.inference
    rows = batch if hooks is None else hooks.expand_batch(batch)
    logits = self.compute_logits(params, rows)
    weights = rows.get("decoder_loss_weights", rows["decoder_target_tokens"] > 0)
    scores = losses.token_log_likelihoods(logits, rows["decoder_target_tokens"], weights)
    return scores if hooks is None else hooks.reduce_scores(scores)

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
    hooks = self.family.inference
    if hooks is not None:
      if return_all_decodes:
        raise ValueError("This model's prompt family returns one decode per example (e.g. a prompt ensemble); "
                         "leave return_all_decodes=False.")
      decodes, aux = self._predict(params, hooks.expand_batch(batch), rng, decoder_params, False, num_decodes)
      eos_id = getattr(self.output_vocabulary, "eos_id", None) or 1
      best, scores = hooks.reduce_decodes(decodes, aux["scores"], eos_id)
      return best, {"scores": scores}
    return self._predict(params, batch, rng, decoder_params, return_all_decodes, num_decodes)

  def _predict(self, params: Params, batch: Batch, rng: Array | None, decoder_params: Mapping[str, Any] | None,
               return_all_decodes: bool, num_decodes: int | None) -> tuple[Array, dict[str, Array]]:
    enc_tokens = batch["encoder_input_tokens"]
    dec_len = batch["decoder_input_tokens"].shape[1]
    params_dec = {**self.default_decoder_params, **(decoder_params or {})}
    if num_decodes is not None:
      params_dec["num_decodes"] = num_decodes
    n = params_dec["num_decodes"]
    encoded = self.module.apply({"params": params}, enc_tokens, prompt_inputs=self.prompt_inputs(batch),
                                method=self.module.encode)
    encoded = decoding.flat_batch_beam_expand(encoded, n)
    enc_tokens_n = decoding.flat_batch_beam_expand(enc_tokens, n)
    cache = self._init_cache(params, enc_tokens.shape[0], enc_tokens.shape[1], dec_len, self.prompt_inputs(batch))

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
