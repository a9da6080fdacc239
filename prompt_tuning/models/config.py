"""Model hyper-parameters: one frozen dataclass and the T5 1.1 / mT5 sizes."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

T5_VOCAB_SIZE = 32128  # cc_all.32000 + 100 extra ids, rounded up to a multiple of 128.
MT5_VOCAB_SIZE = 250112  # mc4.250000 + 100 extra ids, rounded up.
REMAT_POLICIES = ("none", "minimal", "full")


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Shape and numerics of a T5 1.1 encoder-decoder (defaults: T5 1.1 Small)."""

  vocab_size: int = T5_VOCAB_SIZE
  emb_dim: int = 512
  num_heads: int = 6
  head_dim: int = 64
  mlp_dim: int = 1024
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  dropout_rate: float = 0.0
  dtype: Any = jnp.bfloat16  # activation dtype; parameters are always float32.
  relpos_num_buckets: int = 32
  relpos_max_distance: int = 128
  mlp_activations: tuple[str, ...] = ("gelu", "linear")
  logits_via_embedding: bool = False  # T5 1.0 ties the output head; T5 1.1 does not.
  scan_layers: bool = False
  remat_policy: str = "none"
  # The attention as the platform runs it fastest: on CPU, einsums over head-major operands (layers.
  # HEAD_MAJOR_PLATFORMS); elsewhere jax.nn.dot_product_attention with the relative-position bias (XLA's fused
  # softmax(QK^T + bias)V on TPU, cuDNN's on GPU), the einsum path where attention dropout is on. False: the
  # einsum attention in T5X's [batch, length, heads, head_dim] layout everywhere. Same numerics up to rounding.
  fused_attention: bool = True

  def __post_init__(self):
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy={self.remat_policy!r} is not one of {REMAT_POLICIES}.")
    for name in ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim", "num_encoder_layers",
                 "num_decoder_layers", "relpos_num_buckets"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"T5Config.{name}={getattr(self, name)!r} must be a positive integer.")
    object.__setattr__(self, "dtype", jnp.dtype(self.dtype))

  def replace(self, **changes: Any) -> "T5Config":
    return dataclasses.replace(self, **changes)


def _size(layers: int, d: int, heads: int, mlp: int, head_dim: int = 64) -> dict[str, int]:
  return dict(num_encoder_layers=layers, num_decoder_layers=layers, emb_dim=d, num_heads=heads,
              head_dim=head_dim, mlp_dim=mlp)


# T5 1.1 sizes (Flaxformer t5_1_1_{size}.gin); "tiny" is the test size of the reference's checkpoint.
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(_size(2, 4, 2, 8, head_dim=2), relpos_num_buckets=4, relpos_max_distance=8),
    "small": _size(8, 512, 6, 1024),
    "base": _size(12, 768, 12, 2048),
    "large": _size(24, 1024, 16, 2816),
    "xl": _size(24, 2048, 32, 5120),
    "xxl": _size(24, 4096, 64, 10240),
}


def get_config(size: str = "small", vocab: str = "t5", **overrides: Any) -> T5Config:
  """A T5 1.1 config by size name ("tiny", "small", ..., "xxl"); `vocab="mt5"` gives the mT5 table."""
  key = size.lower().replace("t5_1_1_", "")
  if key not in SIZES:
    raise ValueError(f"Unknown model size {size!r}; choose one of {sorted(SIZES)} "
                     "(or build T5Config(...) directly for a custom shape).")
  vocabs = {"t5": T5_VOCAB_SIZE, "mt5": MT5_VOCAB_SIZE}
  if vocab not in vocabs:
    raise ValueError(f"Unknown vocabulary {vocab!r}; choose one of {sorted(vocabs)}.")
  return T5Config(**{**SIZES[key], "vocab_size": vocabs[vocab], **overrides})


POSITION_EMBEDDINGS = ("relative", "rotary")


@dataclasses.dataclass(frozen=True)
class DecoderOnlyConfig:
  """Shape and numerics of a decoder-only language model (defaults: a T5 1.1 Small-shaped decoder).

  The T5X/Flaxformer style (relative position bias, query scale folded into the initialiser, tied logits divided
  by sqrt(d)) is the default; a Llama-style model sets `position_embedding="rotary"`, `num_kv_heads` (grouped-query
  attention), `scale_attention_logits=True`, `mlp_activations=("silu", "linear")` and `tied_logits_scaled=False`
  (`runtime.checkpoints.hf_llama` builds it from a Hugging Face config).
  """

  vocab_size: int = T5_VOCAB_SIZE
  emb_dim: int = 512
  num_heads: int = 6
  head_dim: int = 64
  mlp_dim: int = 1024
  num_layers: int = 8
  num_kv_heads: int | None = None  # None: one key/value head per query head
  dropout_rate: float = 0.0
  dtype: Any = jnp.bfloat16  # activation dtype; parameters are always float32.
  mlp_activations: tuple[str, ...] = ("gelu", "linear")
  layer_norm_epsilon: float = 1e-6
  position_embedding: str = "relative"
  relpos_num_buckets: int = 32
  relpos_max_distance: int = 128
  rope_theta: float = 10000.0
  rope_scaling: tuple[tuple[str, Any], ...] = ()  # ("rope_type", "linear" | "llama3") and its parameters
  scale_attention_logits: bool = False  # q·k / sqrt(head_dim) at run time (Llama); T5 folds it into the init
  logits_via_embedding: bool = False
  tied_logits_scaled: bool = True  # tied logits / sqrt(emb_dim), as Flaxformer; Llama does not scale
  scan_layers: bool = False
  remat_policy: str = "none"
  fused_attention: bool = True  # as T5Config.fused_attention

  def __post_init__(self):
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy={self.remat_policy!r} is not one of {REMAT_POLICIES}.")
    if self.position_embedding not in POSITION_EMBEDDINGS:
      raise ValueError(f"position_embedding={self.position_embedding!r} is not one of {POSITION_EMBEDDINGS}.")
    for name in ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim", "num_layers", "relpos_num_buckets"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"DecoderOnlyConfig.{name}={getattr(self, name)!r} must be a positive integer.")
    if self.num_heads % self.kv_heads:
      raise ValueError(f"num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads} (grouped-query "
                       "attention shares each key/value head among num_heads / num_kv_heads query heads).")
    scaling = self.rope_scaling.items() if isinstance(self.rope_scaling, dict) else self.rope_scaling
    object.__setattr__(self, "rope_scaling", tuple(sorted(tuple(item) for item in scaling)))
    object.__setattr__(self, "dtype", jnp.dtype(self.dtype))

  @property
  def kv_heads(self) -> int:
    return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

  @property
  def num_decoder_layers(self) -> int:
    return self.num_layers

  def replace(self, **changes: Any) -> "DecoderOnlyConfig":
    return dataclasses.replace(self, **changes)


def get_decoder_only_config(size: str = "small", vocab: str = "t5", **overrides: Any) -> DecoderOnlyConfig:
  """A T5 1.1-shaped decoder-only config by size name (the decoder stack of `get_config(size)`)."""
  t5 = get_config(size, vocab)
  fields = dict(vocab_size=t5.vocab_size, emb_dim=t5.emb_dim, num_heads=t5.num_heads, head_dim=t5.head_dim,
                mlp_dim=t5.mlp_dim, num_layers=t5.num_decoder_layers, relpos_num_buckets=t5.relpos_num_buckets,
                relpos_max_distance=t5.relpos_max_distance)
  return DecoderOnlyConfig(**{**fields, **overrides})
