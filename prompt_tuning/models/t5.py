"""T5 1.1 encoder, decoder and encoder-decoder stacks (Flaxformer tree: `encoder/layers_0/...`).

What a prompt family adds comes from one object, `prompt_tuning.family.PromptFamily`: its input prompt lives at
`encoder/prompt` and is combined with the embedded inputs before input dropout (masks then treat the prompt
positions as real tokens); its per-stack hooks (`encoder/<name>`, `decoder/<name>`) give each layer arrays by
key ("inputs" rewrites the prompt positions of the layer's input, an attention name prefixes that attention's
keys and values); its site hooks transform activations inside every layer (`family.SITES`).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import masks
from prompt_tuning.family import PromptFamily, StackInfo, family_of
from prompt_tuning.models import layers as L
from prompt_tuning.models.config import T5Config

Array = jax.Array

REMAT_POLICIES: dict[str, Callable | None] = {
    "minimal": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "full": None,  # save nothing: recompute the whole layer in the backward pass
}


def decoder_logit_mask(decoder_input_tokens: Array, dtype: Any) -> Array:
  """[B, L, 1]: 1 at position 0, at every token > 0 and just before one (Flaxformer's convention)."""
  nonzero = decoder_input_tokens > 0
  next_nonzero = jnp.pad(nonzero[:, 1:], ((0, 0), (0, 1)))
  first = jnp.arange(decoder_input_tokens.shape[-1])[None, :] == 0
  return (nonzero | next_nonzero | first).astype(dtype)[..., None]


def apply_layer_prompt(x: Array, keep: Array, prompt: Array) -> Array:
  """`x[:, :P] <- keep * x[:, :P] + prompt`: keep 0 replaces the prompt positions, keep 1 adds to them."""
  p = prompt.shape[-2]
  head = keep.astype(x.dtype) * x[:, :p] + prompt.astype(x.dtype)
  return jnp.concatenate([head, x[:, p:]], axis=1)


def layer_output(cfg: T5Config, x: Array):
  """Scanned layers return `(carry, per-layer output)`; unrolled ones return the activations."""
  return (x, None) if cfg.scan_layers else x


class EncoderLayer(nn.Module):
  """Pre-LN self-attention + gated MLP, residual dropouts broadcast over length."""

  config: T5Config
  family: PromptFamily | None = None

  @nn.compact
  def __call__(self, x: Array, mask: Array, bias: Array, logit_mask: Array, deterministic: bool,
               hooks: Mapping[str, Any] | None = None) -> Array:
    """`hooks`: this layer's slice of the per-layer hook outputs (see the module docstring)."""
    cfg = self.config
    hooks = hooks or {}
    drop = lambda y: nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic)
    if "inputs" in hooks:
      x = apply_layer_prompt(x, *hooks["inputs"])
    h = L.RMSNorm(cfg.dtype, name="pre_attention_layer_norm")(x) * logit_mask
    sites = family_of(self).site_hooks
    h = L.MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate, cfg.dtype, cfg.fused_attention,
                             sites, name="attention")(h, h, mask, bias, deterministic=deterministic,
                                                      prefix_kv=hooks.get("attention"))
    x = x + drop(h)
    h = L.RMSNorm(cfg.dtype, name="pre_mlp_layer_norm")(x) * logit_mask
    h = L.MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, cfg.dtype, sites,
                   name="mlp")(h, deterministic)
    return layer_output(cfg, L.constrain(x + drop(h), ("batch", "length", "embed")))


class DecoderLayer(nn.Module):
  """Causal self-attention, cross-attention to the encoder, gated MLP."""

  config: T5Config
  family: PromptFamily | None = None

  @nn.compact
  def __call__(self, y: Array, encoded: Array, self_mask: Array | None, cross_mask: Array, bias: Array,
               logit_mask: Array, deterministic: bool, decode: bool,
               hooks: Mapping[str, Any] | None = None) -> Array:
    cfg = self.config
    hooks = hooks or {}
    drop = lambda z: nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(z, deterministic=deterministic)
    sites = family_of(self).site_hooks
    attn = lambda name: L.MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate, cfg.dtype,
                                             cfg.fused_attention, sites, name=name)
    h = L.RMSNorm(cfg.dtype, name="pre_self_attention_layer_norm")(y) * logit_mask
    h = attn("self_attention")(h, h, self_mask, bias, deterministic=deterministic, decode=decode,
                               prefix_kv=hooks.get("self_attention"))
    y = y + drop(h)
    h = L.RMSNorm(cfg.dtype, name="pre_cross_attention_layer_norm")(y) * logit_mask
    h = attn("encoder_decoder_attention")(h, encoded, cross_mask, None, deterministic=deterministic,
                                          prefix_kv=hooks.get("encoder_decoder_attention"), static_kv=True)
    y = y + drop(h)
    h = L.RMSNorm(cfg.dtype, name="pre_mlp_layer_norm")(y) * logit_mask
    h = L.MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, cfg.dtype, sites,
                   name="mlp")(h, deterministic)
    return layer_output(cfg, L.constrain(y + drop(h), ("batch", "length", "embed")))


def run_layers(module: nn.Module, layer_cls: type, num_layers: int, x: Array, *args,
               per_layer: Mapping[str, Any] | None = None) -> Array:
  """Apply `num_layers` layers, unrolled (`layers_i`) or scanned (`layers`, stacked on axis 0), with remat.

  `per_layer` (optional) is a pytree with a leading layer axis; layer i receives its slice as a last argument.
  """
  cfg: T5Config = module.config
  cls = layer_cls
  if cfg.remat_policy != "none":
    static = tuple(i + 2 for i, a in enumerate(args) if isinstance(a, bool))  # self=0, x=1: bool flags static
    cls = nn.remat(layer_cls, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers,
                   static_argnums=static)
  if not cfg.scan_layers:
    for i in range(num_layers):
      extra = (jax.tree_util.tree_map(lambda a, i=i: a[i], per_layer),) if per_layer else ()
      x = cls(cfg, module.family, name=f"layers_{i}")(x, *args, *extra)
    return x
  extra, extra_axes = ((per_layer,), (0,)) if per_layer else ((), ())
  scanned = nn.scan(cls, variable_axes={"params": 0, "cache": 0, L.ENCODED_KV: 0},
                    split_rngs={"params": True, "dropout": True}, in_axes=(nn.broadcast,) * len(args) + extra_axes,
                    length=num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
  x, _ = scanned(cfg, module.family, name="layers")(x, *args, *extra)
  return x


RESERVED_HOOK_NAMES = frozenset({"prompt", "layers", "relpos_bias", "encoder_norm", "decoder_norm", "logits_dense",
                                 "config", "token_embedder", "family"})


def build_stack_hooks(module: nn.Module, stack: StackInfo) -> tuple[str, ...]:
  """In `setup`: the family's per-stack hooks as children named by their keys; returns those names."""
  names = tuple(family_of(module).stack_hooks)
  for name in names:
    if name in RESERVED_HOOK_NAMES:
      raise ValueError(f"Stack hook name {name!r} is taken by the stack itself; rename it in "
                       "PromptFamily.stack_hooks (e.g. 'layer_prompts', 'prefix').")
    setattr(module, name, family_of(module).stack_hooks[name](stack=stack))
  return names


def hook_outputs(module: nn.Module) -> dict[str, Any]:
  """Merge the per-layer outputs of a stack's hook modules (each returns a dict keyed as the layers read)."""
  out: dict[str, Any] = {}
  for name in module.hook_names:
    out.update(getattr(module, name)())
  return out


class Encoder(nn.Module):
  """Embeds (and prompts) the inputs, then runs the encoder layers; output length = prompt + input length."""

  config: T5Config
  token_embedder: nn.Module
  family: PromptFamily | None = None

  def setup(self):
    cfg = self.config
    family = family_of(self)
    self.prompt = None if family.prompt is None else family.prompt()
    stack = StackInfo("encoder", cfg.num_encoder_layers, cfg.emb_dim, cfg.num_heads, cfg.head_dim, ("attention",),
                      prompt_length=getattr(self.prompt, "length", None),
                      prompt_combination=getattr(self.prompt, "combination", None))
    self.hook_names = build_stack_hooks(self, stack)

  def mask_tokens(self, tokens: Array) -> Array:
    """The token ids that masks are built from: prompt positions count as real (non-zero) tokens."""
    return tokens if self.prompt is None else self.prompt.combine_tokens(tokens)

  @nn.compact
  def __call__(self, tokens: Array, enable_dropout: bool = False,
               prompt_inputs: Mapping[str, Array] | None = None, use_prompt: bool = True) -> Array:
    """`prompt_inputs` (e.g. `task_ids`) are passed to the prompt module as keyword arguments.

    `use_prompt=False` runs the encoder without the input prompt and the per-stack hooks.
    """
    cfg = self.config
    x = self.token_embedder(tokens)
    prompted = use_prompt and self.prompt is not None
    if prompted:
      x = self.prompt(tokens, x, **(prompt_inputs or {}))
    mtokens = self.mask_tokens(tokens) if use_prompt else tokens
    per_layer = hook_outputs(self) if use_prompt else {}
    x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=not enable_dropout).astype(cfg.dtype)
    x = L.constrain(x, ("batch", "length", "embed"))
    valid = mtokens > 0
    visibility = masks.normalise_attention(family_of(self).prompt_attention) if prompted else None
    if visibility is None:
      mask = L.attention_mask(valid, valid)
    else:
      mask = masks.prompt_attention_mask(mtokens, masks.prompt_positions(self.prompt.combine_tokens, tokens),
                                         visibility)
    logit_mask = valid[..., None].astype(cfg.dtype)
    length = x.shape[1]
    bias = L.RelativePositionBias(cfg.num_heads, cfg.relpos_num_buckets, cfg.relpos_max_distance, True,
                                  cfg.dtype, name="relpos_bias")(length, length)
    x = run_layers(self, EncoderLayer, cfg.num_encoder_layers, x, mask, bias, logit_mask, not enable_dropout,
                   per_layer=per_layer)
    x = L.RMSNorm(cfg.dtype, name="encoder_norm")(x)
    x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=not enable_dropout)
    return x * logit_mask


class Decoder(nn.Module):
  """Decoder stack with a KV cache for step-by-step decoding, and the untied `logits_dense` head."""

  config: T5Config
  token_embedder: nn.Module
  family: PromptFamily | None = None

  def setup(self):
    cfg = self.config
    stack = StackInfo("decoder", cfg.num_decoder_layers, cfg.emb_dim, cfg.num_heads, cfg.head_dim,
                      ("self_attention", "encoder_decoder_attention"))
    self.hook_names = build_stack_hooks(self, stack)

  @nn.compact
  def __call__(self, encoded: Array, encoder_mask_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Array | None, enable_dropout: bool = False, decode: bool = False,
               max_decode_length: int | None = None) -> Array:
    cfg = self.config
    y = self.token_embedder(decoder_input_tokens)
    y = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=not enable_dropout).astype(cfg.dtype)
    y = L.constrain(y, ("batch", "length", "embed"))
    logit_mask = decoder_logit_mask(decoder_input_tokens, cfg.dtype)
    relpos = L.RelativePositionBias(cfg.num_heads, cfg.relpos_num_buckets, cfg.relpos_max_distance, False,
                                    cfg.dtype, name="relpos_bias")
    enc_valid = encoder_mask_tokens > 0
    length = decoder_input_tokens.shape[1]
    if decode:
      initialized = self.has_variable("cache", "position")
      position = self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
      kv_len = max_decode_length or length
      if not initialized:
        bias = relpos(length, kv_len)
      else:
        bias = relpos(length, kv_len, query_offset=position.value)
        position.value = position.value + length
      self_mask = None
      cross_mask = L.attention_mask(jnp.ones_like(decoder_input_tokens, bool), enc_valid)
    else:
      bias = relpos(length, length)
      targets = decoder_input_tokens if decoder_target_tokens is None else decoder_target_tokens
      tvalid = targets > 0
      self_mask = L.attention_mask(tvalid, tvalid) & L.causal_mask(length)
      cross_mask = L.attention_mask(tvalid, enc_valid)
    y = run_layers(self, DecoderLayer, cfg.num_decoder_layers, y, encoded, self_mask, cross_mask, bias,
                   logit_mask, not enable_dropout, decode, per_layer=hook_outputs(self))
    y = L.RMSNorm(cfg.dtype, name="decoder_norm")(y)
    y = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=not enable_dropout)
    y = y * logit_mask
    if cfg.logits_via_embedding:
      logits = self.token_embedder.attend(y) / jnp.sqrt(y.shape[-1]).astype(jnp.float32)
    else:
      logits = L.Projection(cfg.vocab_size, ("embed", "vocab"), dtype=jnp.float32, name="logits_dense")(y)
    return L.constrain(logits, ("batch", "length", "vocab"))


class EncoderDecoder(nn.Module):
  """T5 1.1 encoder-decoder; `family` (optional) adds a prompt family's parameters (`prompt_tuning.family`).

  With `family.encoder_first_pass`, the frozen encoder first runs without the prompt and its output reaches the
  prompt module as the prompt input `first_pass`.
  """

  config: T5Config
  family: PromptFamily | None = None

  def setup(self):
    cfg = self.config
    self.token_embedder = L.Embed(cfg.vocab_size, cfg.emb_dim, cfg.dtype)
    self.encoder = Encoder(cfg, self.token_embedder, self.family)
    self.decoder = Decoder(cfg, self.token_embedder, self.family)

  def encode(self, encoder_input_tokens: Array, enable_dropout: bool = False,
             prompt_inputs: Mapping[str, Array] | None = None) -> Array:
    if family_of(self).encoder_first_pass:
      first = self.encoder(encoder_input_tokens, False, use_prompt=False)
      prompt_inputs = {**(prompt_inputs or {}), "first_pass": jax.lax.stop_gradient(first)}
    return self.encoder(encoder_input_tokens, enable_dropout, prompt_inputs)

  def decode(self, encoded: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
             decoder_target_tokens: Array | None = None, enable_dropout: bool = False, decode: bool = False,
             max_decode_length: int | None = None) -> Array:
    return self.decoder(encoded, self.encoder.mask_tokens(encoder_input_tokens), decoder_input_tokens,
                        decoder_target_tokens, enable_dropout, decode, max_decode_length)

  def forward(self, encoder_input_tokens: Array, decoder_input_tokens: Array, decoder_target_tokens: Array,
              enable_dropout: bool = False, prompt_inputs: Mapping[str, Array] | None = None) -> tuple[Array, Array]:
    """Teacher-forced (encoder outputs, float32 logits), for losses that read both."""
    encoded = self.encode(encoder_input_tokens, enable_dropout, prompt_inputs)
    return encoded, self.decode(encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
                                enable_dropout)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array, decoder_target_tokens: Array,
               enable_dropout: bool = False, decode: bool = False, max_decode_length: int | None = None,
               prompt_inputs: Mapping[str, Array] | None = None) -> Array:
    """Float32 logits [B, target_length, vocab]."""
    encoded = self.encode(encoder_input_tokens, enable_dropout, prompt_inputs)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
                       enable_dropout, decode, max_decode_length)


def abstract_variables(config: T5Config, family: PromptFamily | None = None,
                       batch: int = 1, input_length: int = 4, target_length: int = 4) -> dict:
  """Shapes, dtypes and logical-axis metadata of every variable, without allocating any (`jax.eval_shape`)."""
  model = EncoderDecoder(config, family)
  enc = jnp.ones((batch, input_length), jnp.int32)
  dec = jnp.ones((batch, target_length), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), enc, dec, dec))


def num_params(config: T5Config, family: PromptFamily | None = None) -> int:
  """Number of parameters of the model (counted from the real tree, not a formula)."""
  params = nn.meta.unbox(abstract_variables(config, family)["params"])
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
