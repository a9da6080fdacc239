"""The model wrappers (T5X `EncoderDecoderModel`, `DecoderOnlyModel`): loss, per-example scores and decoding
around a flax module.

What the module's prompt family adds (`prompt_tuning.family`) reaches the wrapper through that one object: the
batch features its prompt reads, its extra loss terms and its inference hooks.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

import jax
import jax.numpy as jnp

from prompt_tuning.family import ForwardOutputs, PromptFamily, family_of
from prompt_tuning.models.decoder_only import DecoderOnly
from prompt_tuning.models.layers import ENCODED_KV
from prompt_tuning.models.t5 import EncoderDecoder
from prompt_tuning.runtime import decoding, losses

if TYPE_CHECKING:
  import seqio

Array = jax.Array
Batch = Mapping[str, Array]
Params = Mapping[str, Any]


class _FamilyFeatureConverter:
  """The model's seqio feature converter (`feature_converters.<name>`), passing the family's batch features
  through; looked up on first use, so importing the model does not import TensorFlow."""

  def __init__(self, name: str):
    self.name = name

  def __get__(self, obj: Any, owner: type | None = None) -> Callable[..., Any]:
    from prompt_tuning.runtime import feature_converters  # pylint: disable=import-outside-toplevel
    if obj is None:
      return getattr(feature_converters, self.name)()
    return getattr(feature_converters, self.name)(family_of(obj.module).batch_features,
                                                  **({"bos_id": obj.bos_id} if hasattr(obj, "bos_id") else {}))


class BaseModel:
  """What both wrappers share: T5X's token-summed cross-entropy (+ z-loss) over `decoder_target_tokens` weighted
  by `decoder_loss_weights`, the family's loss terms, rank-classification scores and the family's inference hooks
  around decoding. Subclasses compute the logits and decode."""

  def __init__(self, module: Any, input_vocabulary: seqio.Vocabulary | None = None,
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

  def compute_logits(self, params: Params, batch: Batch, dropout_rng: Array | None = None) -> Array:
    raise NotImplementedError

  def compute_outputs(self, params: Params, batch: Batch, dropout_rng: Array | None = None,
                      module: Any = None) -> tuple[Array, Array]:
    raise NotImplementedError

  def _predict(self, params: Params, batch: Batch, rng: Array | None, decoder_params: Mapping[str, Any] | None,
               return_all_decodes: bool, num_decodes: int | None) -> tuple[Array, dict[str, Array]]:
    raise NotImplementedError

  def _decode_kwargs(self, decoder_params: Mapping[str, Any] | None, num_decodes: int | None) -> dict[str, Any]:
    """The decode function's keyword arguments: the defaults, then `decoder_params`, then `num_decodes`."""
    params_dec = {**self.default_decoder_params, **(decoder_params or {})}
    if num_decodes is not None:
      params_dec["num_decodes"] = num_decodes
    return params_dec

  @property
  def eos_id(self) -> int:
    return getattr(self.output_vocabulary, "eos_id", None) or 1

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
    scores = _target_scores(self.compute_logits(params, rows), rows)
    return scores if hooks is None else hooks.reduce_scores(scores)

  def predict_batch_with_aux(self, params: Params, batch: Batch, rng: Array | None = None,
                             decoder_params: Mapping[str, Any] | None = None,
                             return_all_decodes: bool = False,
                             num_decodes: int | None = None) -> tuple[Array, dict[str, Array]]:
    """Decode up to `decoder_input_tokens.shape[1]` tokens; returns the best (or all) decodes and their scores."""
    hooks = self.family.inference
    if hooks is not None:
      if return_all_decodes:
        raise ValueError("This model's prompt family returns one decode per example (e.g. a prompt ensemble); "
                         "leave return_all_decodes=False.")
      decodes, aux = self._predict(params, hooks.expand_batch(batch), rng, decoder_params, False, num_decodes)
      best, scores = hooks.reduce_decodes(decodes, aux["scores"], self.eos_id)
      return best, {"scores": scores}
    return self._predict(params, batch, rng, decoder_params, return_all_decodes, num_decodes)

  def predict_batch(self, params: Params, batch: Batch, rng: Array | None = None, **kwargs) -> Array:
    return self.predict_batch_with_aux(params, batch, rng, **kwargs)[0]


class EncoderDecoderModel(BaseModel):
  """The T5X encoder-decoder wrapper. Feature names follow `seqio.EncDecFeatureConverter`:
  `encoder_input_tokens`, `decoder_input_tokens`, `decoder_target_tokens`, `decoder_loss_weights`.
  """

  FEATURE_CONVERTER_CLS: Any = _FamilyFeatureConverter("enc_dec_converter")  # an instance may set its own
  module: EncoderDecoder

  # ------------------------------------------------------------------------------------------- parameters
  def input_shapes(self, task_feature_lengths: Mapping[str, int], batch_size: int) -> dict[str, tuple[int, int]]:
    """The model features' shapes for SeqIO task feature lengths (`EncDecFeatureConverter`'s)."""
    return {"encoder_input_tokens": (batch_size, task_feature_lengths["inputs"]),
            "decoder_input_tokens": (batch_size, task_feature_lengths["targets"])}

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

  def score_candidates(self, params: Params, batch: Batch, num_candidates: int) -> Array:
    """`score_batch` for rank-classification rows in groups of `num_candidates` adjacent rows with one input
    (SeqIO's `rank_classification` layout): the encoder runs once per group and serves every candidate. A group
    whose rows differ in their inputs scores NaN rather than a wrong number."""
    if self.family.inference is not None:  # a family that expands the batch itself (e.g. an ensemble)
      return self.score_batch(params, batch)
    tokens = batch["encoder_input_tokens"]
    if tokens.shape[0] % num_candidates:
      raise ValueError(f"{tokens.shape[0]} rows do not split into groups of num_candidates={num_candidates}; "
                       "batch whole examples (a multiple of the candidate count).")
    firsts = jax.tree_util.tree_map(lambda x: x[::num_candidates], self.prompt_inputs(batch))
    encoded = self.module.apply({"params": params}, tokens[::num_candidates], prompt_inputs=firsts,
                                method=self.module.encode)
    encoded = jnp.repeat(encoded, num_candidates, axis=0)
    logits = self.module.apply({"params": params}, encoded, tokens, batch["decoder_input_tokens"],
                               batch["decoder_target_tokens"], method=self.module.decode)
    scores = _target_scores(logits, batch)
    same_input = jnp.all(tokens == jnp.repeat(tokens[::num_candidates], num_candidates, axis=0), axis=1)
    group_shares = jnp.all(same_input.reshape(-1, num_candidates), axis=1)
    return jnp.where(jnp.repeat(group_shares, num_candidates), scores, jnp.nan)

  # ------------------------------------------------------------------------------------------- decoding
  def _init_cache(self, params: Params, batch_size: int, enc_len: int, dec_len: int,
                  inputs_for_prompt: Mapping[str, Array] | None = None) -> Any:
    enc = jnp.ones((batch_size, enc_len), jnp.int32)
    dec = jnp.ones((batch_size, dec_len), jnp.int32)
    _, variables = self.module.apply({"params": params}, enc, dec, dec, decode=True, max_decode_length=dec_len,
                                     prompt_inputs=inputs_for_prompt, mutable=["cache"])
    return variables["cache"]

  def encoded_kv(self, params: Params, encoded: Array, encoder_input_tokens: Array, num_decodes: int = 1) -> Any:
    """Every decoder layer's cross-attention keys and values (the `ENCODED_KV` collection), computed once for a
    decode rather than at each step, with `num_decodes` adjacent copies of each example's. Pass them to
    `module.decode` as the `ENCODED_KV` variables."""
    dec = jnp.zeros((encoded.shape[0], 1), jnp.int32)
    _, variables = self.module.apply({"params": params}, encoded, encoder_input_tokens, dec, None,
                                     method=self.module.decode, mutable=[ENCODED_KV])
    batch_axis = 1 if self.module.config.scan_layers else 0  # scanned layers stack their variables on axis 0
    expand = lambda x: jnp.moveaxis(decoding.flat_batch_beam_expand(jnp.moveaxis(x, batch_axis, 0), num_decodes),
                                    0, batch_axis)
    return jax.tree_util.tree_map(expand, variables[ENCODED_KV])

  def _predict(self, params: Params, batch: Batch, rng: Array | None, decoder_params: Mapping[str, Any] | None,
               return_all_decodes: bool, num_decodes: int | None) -> tuple[Array, dict[str, Array]]:
    enc_tokens = batch["encoder_input_tokens"]
    dec_len = batch["decoder_input_tokens"].shape[1]
    params_dec = self._decode_kwargs(decoder_params, num_decodes)
    n = params_dec["num_decodes"]
    encoded = self.module.apply({"params": params}, enc_tokens, prompt_inputs=self.prompt_inputs(batch),
                                method=self.module.encode)
    encoded_kv = self.encoded_kv(params, encoded, enc_tokens, n)
    encoded = decoding.flat_batch_beam_expand(encoded, n)
    enc_tokens_n = decoding.flat_batch_beam_expand(enc_tokens, n)
    cache = self._init_cache(params, enc_tokens.shape[0], enc_tokens.shape[1], dec_len, self.prompt_inputs(batch))

    def tokens_to_logits(state: decoding.DecodingState):
      logits, mutated = self.module.apply(
          {"params": params, "cache": state.cache, ENCODED_KV: encoded_kv}, encoded, enc_tokens_n, state.cur_token,
          None, decode=True, max_decode_length=dec_len, method=self.module.decode, mutable=["cache"])
      return logits[:, 0, :], mutated["cache"]

    decodes, scores = self.decode_fn(inputs=jnp.zeros_like(batch["decoder_input_tokens"]), cache=cache,
                                     tokens_to_logits=tokens_to_logits, eos_id=self.eos_id, decode_rng=rng,
                                     **params_dec)
    return _best_or_all(decodes, scores, return_all_decodes)


def _target_scores(logits: Array, batch: Batch) -> Array:
  """[B] summed log-likelihood of each row's target tokens (weighted by `decoder_loss_weights` when present)."""
  weights = batch.get("decoder_loss_weights", batch["decoder_target_tokens"] > 0)
  return losses.token_log_likelihoods(logits, batch["decoder_target_tokens"], weights)


def _best_or_all(decodes: Array, scores: Array, return_all: bool) -> tuple[Array, dict[str, Array]]:
  """[B, n, L] decodes sorted by score ascending -> all of them, or the best one per row."""
  if return_all:
    return decodes, {"scores": scores}
  return decodes[:, -1, :], {"scores": scores[:, -1]}


def drop_leading(decodes: Array, lengths: Array) -> Array:
  """Shift each row of [B, ..., L] left by its `lengths` [B], padding with 0: the tokens after the inputs."""
  length = decodes.shape[-1]
  index = jnp.arange(length) + lengths.reshape((-1,) + (1,) * (decodes.ndim - 1))
  taken = jnp.take_along_axis(decodes, jnp.minimum(index, length - 1), axis=-1)
  return jnp.where(index < length, taken, 0)


class DecoderOnlyModel(BaseModel):
  """The T5X decoder-only wrapper. Feature names follow `seqio.DecoderFeatureConverter`: `decoder_input_tokens`,
  `decoder_target_tokens`, `decoder_loss_weights` (1 on the targets only, so inputs carry no loss) and, for
  prefix-LM inputs, `decoder_causal_attention`.

  `predict_batch` prefills the cache with the prompt and the inputs (the positions `decoder_causal_attention`
  marks; just the BOS slot without it) and returns only the new tokens, left-aligned.
  """

  FEATURE_CONVERTER_CLS: Any = _FamilyFeatureConverter("decoder_converter")  # an instance may set its own
  module: DecoderOnly

  def __init__(self, module: DecoderOnly, *args: Any, bos_id: int = 0, **kwargs: Any):
    """`bos_id`: the token the feature converter puts in the BOS slot (seqio's 0; a Llama vocabulary's 1)."""
    super().__init__(module, *args, **kwargs)
    self.bos_id = bos_id

  def input_shapes(self, task_feature_lengths: Mapping[str, int], batch_size: int) -> dict[str, tuple[int, int]]:
    """The model features' shapes for SeqIO task feature lengths (`DecoderFeatureConverter`'s): inputs and
    targets share one sequence; with inputs, `decoder_causal_attention` marks them."""
    if "inputs" not in task_feature_lengths:
      return {"decoder_input_tokens": (batch_size, task_feature_lengths["targets"])}
    length = task_feature_lengths["inputs"] + task_feature_lengths["targets"]
    return {"decoder_input_tokens": (batch_size, length), "decoder_causal_attention": (batch_size, length)}

  def get_initial_variables(self, rng: Array, input_shapes: Mapping[str, tuple[int, ...]]) -> dict:
    """Boxed variables (with logical axes) for inputs of the given shapes; used under `jax.eval_shape` too."""
    dec = jnp.ones(input_shapes["decoder_input_tokens"], jnp.int32)
    causal = jnp.ones_like(dec) if "decoder_causal_attention" in input_shapes else None
    return self.module.init(rng, dec, dec, causal, enable_dropout=False)

  def compute_logits(self, params: Params, batch: Batch, dropout_rng: Array | None = None) -> Array:
    rngs = None if dropout_rng is None else {"dropout": dropout_rng}
    return self.module.apply({"params": params}, batch["decoder_input_tokens"], batch["decoder_target_tokens"],
                             batch.get("decoder_causal_attention"), enable_dropout=dropout_rng is not None,
                             rngs=rngs, prompt_inputs=self.prompt_inputs(batch))

  def compute_outputs(self, params: Params, batch: Batch, dropout_rng: Array | None = None,
                      module: Any = None) -> tuple[Array, Array]:
    raise ValueError(f"The family's loss terms {list(self.family.loss_terms)} read encoder outputs, which a "
                     "decoder-only model does not have; drop PromptFamily.loss_terms for this model.")

  def prefill_cache(self, params: Params, batch: Batch) -> tuple[Any, Array, Array]:
    """(cache holding the prompt and the inputs, the inputs [B, L] to force, each row's input length [B])."""
    tokens = batch["decoder_input_tokens"]
    bidirectional = batch.get("decoder_causal_attention")
    # Every input position (the BOS slot too); without prefix-LM inputs, the BOS slot alone and no bidirectional
    # region, as in the teacher-forced pass.
    causal = jnp.zeros_like(tokens).at[:, 0].set(1) if bidirectional is None else bidirectional.astype(tokens.dtype)
    lengths = jnp.sum(causal, axis=1) - 1
    inputs = tokens * causal
    prompt_inputs = self.prompt_inputs(batch)
    ones = jnp.ones_like(tokens)
    _, variables = self.module.apply({"params": params}, ones, ones, decode=True, max_decode_length=tokens.shape[1],
                                     prompt_inputs=prompt_inputs, mutable=["cache"])
    # The causal-attention mask as targets marks the input positions as real (the BOS slot's token is 0).
    _, variables = self.module.apply({"params": params, "cache": variables["cache"]}, inputs, causal, bidirectional,
                                     prefill=True, prefill_lengths=lengths, prompt_inputs=prompt_inputs,
                                     mutable=["cache"])
    return variables["cache"], inputs, lengths

  def _predict(self, params: Params, batch: Batch, rng: Array | None, decoder_params: Mapping[str, Any] | None,
               return_all_decodes: bool, num_decodes: int | None) -> tuple[Array, dict[str, Array]]:
    length = batch["decoder_input_tokens"].shape[1]
    cache, inputs, lengths = self.prefill_cache(params, batch)

    def tokens_to_logits(state: decoding.DecodingState):
      logits, mutated = self.module.apply({"params": params, "cache": state.cache}, state.cur_token,
                                          state.cur_token, decode=True, max_decode_length=length, mutable=["cache"])
      return logits[:, 0, :], mutated["cache"]

    decodes, scores = self.decode_fn(inputs=inputs, cache=cache, tokens_to_logits=tokens_to_logits,
                                     eos_id=self.eos_id, decode_rng=rng, initial_index=lengths,
                                     **self._decode_kwargs(decoder_params, num_decodes))
    return _best_or_all(drop_leading(decodes, lengths), scores, return_all_decodes)
