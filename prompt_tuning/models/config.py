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
  fused_attention: bool = False  # jax.nn.dot_product_attention with the relative-position bias.

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
