"""A decoder-only language model (Flaxformer `DecoderOnly` tree: `decoder/layers_0/self_attention/...`).

Features are T5X's (`seqio.DecoderFeatureConverter`): `decoder_input_tokens` (targets shifted right, BOS slot
first), `decoder_target_tokens` (0 = padding) and, for prefix-LM inputs, `decoder_causal_attention` (1 over the
inputs and the BOS slot: those positions see each other, the rest is causal).

A prompt family (`prompt_tuning.family`) plugs in as for the encoder: its `prompt` module (`decoder/prompt`)
joins the embedded inputs, before them (`combination="prefix"`) or after the BOS slot (`"prefix_after_bos"`);
the prompt positions see each other and are seen by every later position, with prefix-LM inputs the prompt and
the inputs see each other (`masks.decoder_attention_mask`, which `family.prompt_attention` restricts), and the
logits drop the prompt positions, so they line up with `decoder_target_tokens`. Per-stack hooks get
`StackInfo("decoder", ...)` with the one attention `self_attention`; site hooks act inside every layer.

Decoding: the cache is allocated by a `decode=True` call on full-length inputs, filled with the prompt and the
inputs by a `prefill=True` call (`prefill_lengths`: each row's input length, i.e. the position of its first
decoded token), and then fed one token per row per `decode=True` call; each row keeps its own position in the
prompted sequence (the cache variable `decoder/position`).
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import masks
from prompt_tuning.errors import UserError
from prompt_tuning.family import PromptFamily, StackInfo, family_of
from prompt_tuning.models import layers as L
from prompt_tuning.models.config import DecoderOnlyConfig
from prompt_tuning.models.t5 import (apply_layer_prompt, build_stack_hooks, decoder_logit_mask, hook_outputs,
                                     layer_output, run_layers)

Array = jax.Array
# Where the prompt starts in the sequence, by the prompt's combination.
PROMPT_STARTS = {"prefix": 0, "prefix_after_bos": 1}


class DecoderOnlyLayer(nn.Module):
  """Pre-LN causal self-attention (optionally rotary and grouped-query) + gated MLP."""

  config: DecoderOnlyConfig
  family: PromptFamily | None = None

  @nn.compact
  def __call__(self, y: Array, mask: Array | None, bias: Array | None, positions: Array, logit_mask: Array,
               deterministic: bool, decode: bool, prefill: bool, hooks: Mapping[str, Any] | None = None) -> Array:
    cfg = self.config
    hooks = hooks or {}
    drop = lambda z: nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(z, deterministic=deterministic)
    if "inputs" in hooks:
      y = apply_layer_prompt(y, *hooks["inputs"])
    sites = family_of(self).site_hooks
    rope = L.Rope(cfg.rope_theta, cfg.rope_scaling) if cfg.position_embedding == "rotary" else None
    h = L.RMSNorm(cfg.dtype, cfg.layer_norm_epsilon, name="pre_self_attention_layer_norm")(y) * logit_mask
    h = L.MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate, cfg.dtype, cfg.fused_attention, sites,
                             cfg.kv_heads, rope, cfg.head_dim ** -0.5 if cfg.scale_attention_logits else 1.0,
                             name="self_attention")(h, h, mask, bias, deterministic=deterministic, decode=decode,
                                                    prefix_kv=hooks.get("self_attention"), prefill=prefill,
                                                    positions=positions)
    y = y + drop(h)
    h = L.RMSNorm(cfg.dtype, cfg.layer_norm_epsilon, name="pre_mlp_layer_norm")(y) * logit_mask
    h = L.MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, cfg.dtype, sites,
                   name="mlp")(h, deterministic)
    return layer_output(cfg, L.constrain(y + drop(h), ("batch", "length", "embed")))


class DecoderStack(nn.Module):
  """Embedding, prompt, layers, final norm and head of the decoder-only model (the module docstring)."""

  config: DecoderOnlyConfig
  family: PromptFamily | None = None

  def setup(self):
    cfg = self.config
    family = family_of(self)
    if family.encoder_first_pass:
      raise UserError("PromptFamily.encoder_first_pass reads a first pass of an encoder, which a decoder-only "
                      "model does not have; use an instance-wise family without the first pass.")
    self.token_embedder = L.Embed(cfg.vocab_size, cfg.emb_dim, cfg.dtype)
    self.prompt = None if family.prompt is None else family.prompt()
    combination = getattr(self.prompt, "combination", "prefix")
    if combination not in PROMPT_STARTS:
      raise UserError(f"A decoder-only model puts the prompt before its inputs: prompt combination "
                      f"{combination!r} (PROMPT_COMBINATION) is not supported there; use one of "
                      f"{sorted(PROMPT_STARTS)}.")
    stack = StackInfo("decoder", cfg.num_layers, cfg.emb_dim, cfg.num_heads, cfg.head_dim, ("self_attention",),
                      prompt_length=getattr(self.prompt, "length", None),
                      prompt_combination=None if self.prompt is None else combination)
    self.hook_names = build_stack_hooks(self, stack)

  @property
  def prompt_span(self) -> tuple[int, int]:
    """(first position, length) of the prompt in the prompted sequence; length 0 without a prompt."""
    if self.prompt is None:
      return 0, 0
    return PROMPT_STARTS[getattr(self.prompt, "combination", "prefix")], self.prompt.length

  def combine_tokens(self, tokens: Array) -> Array:
    """Per-position features laid out like the prompted sequence, 1 at the prompt positions."""
    return tokens if self.prompt is None else self.prompt.combine_tokens(tokens)

  def sequence_position(self, decoder_position: Array) -> Array:
    """Position in the prompted sequence of a position of `decoder_input_tokens`."""
    start, length = self.prompt_span
    return jnp.where(decoder_position >= start, decoder_position + length, decoder_position)

  def attention_mask(self, decoder_target_tokens: Array, decoder_causal_attention: Array | None = None) -> Array:
    """[B, 1, S, S] self-attention mask of the prompted sequence (S = prompt + target length)."""
    start, length = self.prompt_span
    mask_tokens = self.combine_tokens(decoder_target_tokens)
    bidirectional = None if decoder_causal_attention is None else self.combine_tokens(decoder_causal_attention)
    if not length:
      return masks.decoder_attention_mask(mask_tokens, None, bidirectional)
    positions = jnp.arange(mask_tokens.shape[1])
    is_prompt = jnp.broadcast_to((positions >= start) & (positions < start + length), mask_tokens.shape)
    visibility = masks.normalise_attention(family_of(self).prompt_attention)
    return masks.decoder_attention_mask(mask_tokens, is_prompt, bidirectional, visibility)

  def relpos(self) -> L.RelativePositionBias | None:
    cfg = self.config
    if cfg.position_embedding != "relative":
      return None
    return L.RelativePositionBias(cfg.num_heads, cfg.relpos_num_buckets, cfg.relpos_max_distance, False, cfg.dtype,
                                  name="relpos_bias")

  @nn.compact
  def __call__(self, decoder_input_tokens: Array, decoder_target_tokens: Array,
               decoder_causal_attention: Array | None = None, enable_dropout: bool = False, decode: bool = False,
               max_decode_length: int | None = None, prefill: bool = False, prefill_lengths: Array | None = None,
               prompt_inputs: Mapping[str, Array] | None = None) -> Array:
    cfg = self.config
    start, prompt_length = self.prompt_span
    batch, length = decoder_input_tokens.shape
    relpos = self.relpos()
    step = decode and self.has_variable("cache", "position")
    position = None
    if decode or prefill:
      position = self.variable("cache", "position", lambda: jnp.zeros((batch,), jnp.int32))
    x = self.token_embedder(decoder_input_tokens)
    per_layer = hook_outputs(self)
    if step:  # one token per row, at the row's own position of the cache
      positions = position.value[:, None]
      after = positions[:, 0] + 1
      position.value = jnp.where((after == start) & (prompt_length > 0), after + prompt_length, after)
      mask = None
      logit_mask = decoder_logit_mask(decoder_input_tokens, cfg.dtype)
      cache_length = (max_decode_length or length) + prompt_length
      bias = None if relpos is None else relpos(1, cache_length, query_offset=positions[:, 0])
      per_layer = {k: v for k, v in per_layer.items() if k != "inputs"}
    else:
      if self.prompt is not None:
        x = self.prompt(decoder_input_tokens, x, **(prompt_inputs or {}))
      total = length + prompt_length
      positions = jnp.broadcast_to(jnp.arange(total)[None], (batch, total))
      mask = self.attention_mask(decoder_target_tokens, decoder_causal_attention)
      logit_mask = decoder_logit_mask(self.combine_tokens(decoder_input_tokens), cfg.dtype)
      bias = None if relpos is None else relpos(total, total)
      if prefill:
        if prefill_lengths is None:
          raise ValueError("prefill=True needs prefill_lengths: each row's number of input positions.")
        position.value = self.sequence_position(prefill_lengths.astype(jnp.int32))
    dropout = lambda z: nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(z, deterministic=not enable_dropout)
    y = L.constrain(dropout(x).astype(cfg.dtype), ("batch", "length", "embed"))
    y = run_layers(self, DecoderOnlyLayer, cfg.num_layers, y, mask, bias, positions, logit_mask,
                   not enable_dropout, decode, prefill, per_layer=per_layer)
    if not step and prompt_length:  # the prompt positions predict nothing: drop them before the head
      drop_prompt = lambda z: jnp.concatenate([z[:, :start], z[:, start + prompt_length:]], axis=1)
      y, logit_mask = drop_prompt(y), drop_prompt(logit_mask)
    y = L.RMSNorm(cfg.dtype, cfg.layer_norm_epsilon, name="decoder_norm")(y)
    y = dropout(y) * logit_mask
    if cfg.logits_via_embedding:
      logits = self.token_embedder.attend(y)
      if cfg.tied_logits_scaled:
        logits = logits / jnp.sqrt(y.shape[-1]).astype(jnp.float32)
    else:
      logits = L.Projection(cfg.vocab_size, ("embed", "vocab"), dtype=jnp.float32, name="logits_dense")(y)
    return L.constrain(logits, ("batch", "length", "vocab"))


class DecoderOnly(nn.Module):
  """Flaxformer's `DecoderOnly`: one `decoder` stack; `family` (optional) adds a prompt family's parameters."""

  config: DecoderOnlyConfig
  family: PromptFamily | None = None

  def setup(self):
    self.decoder = DecoderStack(self.config, self.family)

  def __call__(self, decoder_input_tokens: Array, decoder_target_tokens: Array,
               decoder_causal_attention: Array | None = None, *, enable_dropout: bool = False,
               decode: bool = False, max_decode_length: int | None = None, prefill: bool = False,
               prefill_lengths: Array | None = None, prompt_inputs: Mapping[str, Array] | None = None) -> Array:
    """Float32 logits [B, length, vocab], one per position of `decoder_input_tokens` (none for the prompt)."""
    return self.decoder(decoder_input_tokens, decoder_target_tokens, decoder_causal_attention, enable_dropout,
                        decode, max_decode_length, prefill, prefill_lengths, prompt_inputs)

  def attention_mask(self, decoder_target_tokens: Array, decoder_causal_attention: Array | None = None) -> Array:
    """The [B, 1, S, S] mask of the prompted sequence the layers use (for inspection and tests)."""
    return self.decoder.attention_mask(decoder_target_tokens, decoder_causal_attention)
