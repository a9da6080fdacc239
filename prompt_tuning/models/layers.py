"""T5 1.1 building blocks with Flaxformer's parameter names, logical axes and numerics."""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.family import SITES

Array = jax.Array
Initializer = Callable[..., Array]
NEG_INF = -1e10  # additive attention bias for masked positions, as Flaxformer.
# The variable collection that holds cross-attention's keys and values during a decode: they depend only on the
# encoder's output, so the decoding loop reads them instead of projecting (and transposing) them at every step.
ENCODED_KV = "encoded_kv"
# Where `fused` attention runs as head-major einsums ([batch, heads, length, head_dim] operands) rather than
# jax.nn.dot_product_attention: XLA CPU runs those products faster (docs/benchmarks.md); GPU and TPU keep
# dot_product_attention, which may use a fused kernel (cuDNN on GPU).
HEAD_MAJOR_PLATFORMS = frozenset({"cpu"})

default_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def param(module: nn.Module, name: str, init: Initializer, shape: Sequence[int],
          axes: tuple[str, ...]) -> Array:
  """A float32 parameter annotated with logical axis names."""
  return module.param(name, nn.with_logical_partitioning(init, axes), tuple(shape), jnp.float32)


def constrain(x: Array, axes: tuple[str, ...]) -> Array:
  """Annotate an activation with logical axes (a no-op outside a mesh)."""
  return nn.with_logical_constraint(x, axes)


class RMSNorm(nn.Module):
  """T5LayerNorm: scale-only RMS normalisation, statistics in float32, eps 1e-6."""

  dtype: Any = jnp.float32
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",))
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    return y.astype(self.dtype) * scale.astype(self.dtype)


class Embed(nn.Module):
  """The shared token embedder `token_embedder/embedding` [vocab, embed]."""

  num_embeddings: int
  features: int
  dtype: Any = jnp.float32

  def setup(self):
    self.embedding = param(self, "embedding", nn.initializers.normal(stddev=1.0),
                           (self.num_embeddings, self.features), ("vocab", "embed"))

  def __call__(self, ids: Array) -> Array:
    return jnp.take(self.embedding.astype(self.dtype), ids.astype(jnp.int32), axis=0)

  def attend(self, x: Array) -> Array:
    """Logits against the embedding table (tied head, T5 1.0), in float32."""
    return jnp.einsum("...d,vd->...v", x.astype(jnp.float32), self.embedding)


class Projection(nn.Module):
  """A bias-free projection whose kernel is stored 2-D, as Flaxformer's `DenseGeneral(reshape_kernel=True)`."""

  features: int
  axes: tuple[str, str]
  kernel_init: Initializer = default_kernel_init
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = param(self, "kernel", self.kernel_init, (x.shape[-1], self.features), self.axes)
    return jnp.einsum("...d,df->...f", x.astype(self.dtype), kernel.astype(self.dtype))


def apply_site(sites: Mapping[str, Callable[..., nn.Module]] | None, site: str, x: Array) -> Array:
  """`x` through the site hook for `site`, created as a child named as Flaxformer names that site."""
  make = (sites or {}).get(site)
  return x if make is None else make(name=SITES[site])(x)


class MlpBlock(nn.Module):
  """Gated MLP: gelu(x·wi_0) * (x·wi_1), dropout broadcast over length, then ·wo.

  `sites` (a family's site hooks, `prompt_tuning.family`): "mlp_hidden" transforms the gated hidden.
  """

  mlp_dim: int
  activations: tuple[str, ...] = ("gelu", "linear")
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  sites: Mapping[str, Callable[..., nn.Module]] | None = None

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    acts = {"gelu": functools.partial(nn.gelu, approximate=True), "relu": nn.relu, "linear": lambda y: y,
            "silu": nn.silu}
    h = None
    names = ["wi"] if len(self.activations) == 1 else [f"wi_{i}" for i in range(len(self.activations))]
    for name, act in zip(names, self.activations):
      if act not in acts:
        raise ValueError(f"Unknown MLP activation {act!r}; choose from {sorted(acts)}.")
      y = acts[act](Projection(self.mlp_dim, ("embed", "mlp"), dtype=self.dtype, name=name)(x))
      h = y if h is None else h * y
    h = constrain(h, ("batch", "length", "mlp"))
    h = apply_site(self.sites, "mlp_hidden", h)
    h = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(h, deterministic=deterministic)
    return Projection(x.shape[-1], ("mlp", "embed"), dtype=self.dtype, name="wo")(h)


@functools.lru_cache(maxsize=64)
def relative_position_buckets(q_len: int, k_len: int, bidirectional: bool, num_buckets: int,
                              max_distance: int) -> np.ndarray:
  """[q_len, k_len] bucket ids of `memory_pos - query_pos`, computed at trace time as Flaxformer does."""
  rel = np.arange(k_len, dtype=np.int32)[None, :] - np.arange(q_len, dtype=np.int32)[:, None]
  n = -rel
  ret = np.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(np.int32) * num_buckets
    n = np.abs(n)
  else:
    n = np.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  val_if_large = max_exact + (
      np.log(n.astype(np.float32) / max_exact + np.finfo(np.float32).eps) /
      np.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(np.int32)
  val_if_large = np.minimum(val_if_large, num_buckets - 1)
  return ret + np.where(is_small, n, val_if_large)


class RelativePositionBias(nn.Module):
  """One table `relpos_bias/rel_embedding` [heads, buckets] shared by every layer of a stack."""

  num_heads: int
  num_buckets: int
  max_distance: int
  bidirectional: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, q_len: int, k_len: int, query_offset: Array | None = None) -> Array:
    """Bias [1, heads, q_len, k_len]; with `query_offset` (decoding) the rows start at that position.

    A `query_offset` of shape [B] (per-row positions of a prefilled cache) gives [B, heads, q_len, k_len].
    """
    table = param(self, "rel_embedding", nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                  (self.num_heads, self.num_buckets), ("heads", "relpos_buckets"))
    if query_offset is None:
      buckets = jnp.asarray(relative_position_buckets(q_len, k_len, self.bidirectional, self.num_buckets,
                                                      self.max_distance))
    else:
      full = jnp.asarray(relative_position_buckets(k_len, k_len, self.bidirectional, self.num_buckets,
                                                   self.max_distance))
      if jnp.ndim(query_offset) == 1:
        rows = jnp.take(full, query_offset[:, None] + jnp.arange(q_len)[None, :], axis=0)  # [B, q, k]
        return jnp.moveaxis(jnp.take(table.astype(self.dtype), rows, axis=1), 0, 1)
      buckets = jax.lax.dynamic_slice_in_dim(full, query_offset, q_len, axis=0)
    bias = jnp.take(table.astype(self.dtype), buckets, axis=1)  # [H, q, k]
    return bias[None]


ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class Rope:
  """Rotary position embeddings on the two halves of each head (Llama's `rotate_half` layout).

  `scaling` holds ("rope_type", name) and that type's parameters: "linear" divides every frequency by `factor`;
  "llama3" divides the low frequencies by `factor` and interpolates the middle band (`low_freq_factor`,
  `high_freq_factor`, `original_max_position_embeddings`).
  """

  theta: float = 10000.0
  scaling: tuple[tuple[str, Any], ...] = ()

  def __post_init__(self):
    kind = dict(self.scaling).get("rope_type", "default")
    if kind not in ROPE_TYPES:
      raise ValueError(f"rope_type={kind!r} is not supported; use one of {ROPE_TYPES}.")

  def inverse_frequencies(self, head_dim: int) -> np.ndarray:
    """[head_dim / 2] float32 angular frequencies after scaling."""
    inv = 1.0 / self.theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim))
    params = dict(self.scaling)
    kind = params.get("rope_type", "default")
    if kind == "linear":
      inv = inv / params["factor"]
    elif kind == "llama3":
      factor, low, high = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
      context = params["original_max_position_embeddings"]
      wavelength = 2 * math.pi / inv
      scaled = np.where(wavelength > context / low, inv / factor, inv)
      smooth = (context / wavelength - low) / (high - low)
      middle = (wavelength >= context / high) & (wavelength <= context / low)
      inv = np.where(middle, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
    return np.asarray(inv, np.float32)

  def __call__(self, x: Array, positions: Array) -> Array:
    """Rotate `x` [B, L, heads, head_dim] by its absolute `positions` [B, L]."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(self.inverse_frequencies(x.shape[-1]))
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, L, 1, head_dim]
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    return x * cos + rotated * sin


def attention_mask(query_valid: Array, key_valid: Array) -> Array:
  """[B, 1, q, k] boolean mask from per-position validity."""
  return query_valid[:, None, :, None] & key_valid[:, None, None, :]


def causal_mask(length: int) -> Array:
  return jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]


def prepend_prefix(prefix_kv: tuple[Array, Array], k: Array, v: Array, mask: Array | None,
                   bias: Array | None) -> tuple[Array, Array, Array | None, Array | None]:
  """Put learned key/value prefixes ([P, heads, head_dim] each) before every example's keys and values.

  Prefix positions are visible to every query and carry no relative-position bias (bias 0).
  """
  pk, pv = prefix_kv
  expand = lambda x, like: jnp.broadcast_to(x.astype(like.dtype)[None], (like.shape[0],) + x.shape)
  k = jnp.concatenate([expand(pk, k), k], axis=1)
  v = jnp.concatenate([expand(pv, v), v], axis=1)
  return (k, v, *pad_prefix_positions(pk.shape[0], mask, bias))


def pad_prefix_positions(p: int, mask: Array | None, bias: Array | None) -> tuple[Array | None, Array | None]:
  """The attention mask and bias with `p` prefix positions in front: visible, with bias 0."""
  if mask is not None:
    mask = jnp.pad(mask, ((0, 0),) * (mask.ndim - 1) + ((p, 0),), constant_values=True)
  if bias is not None:
    bias = jnp.pad(bias, ((0, 0),) * (bias.ndim - 1) + ((p, 0),))
  return mask, bias


class MultiHeadAttention(nn.Module):
  """Dot-product attention without 1/sqrt(d) scaling (folded into the query init), with a KV cache.

  Kernels are 2-D: query/key/value [embed, heads*head_dim] and out [heads*head_dim, embed].
  `prefix_kv` (prefix tuning) adds learned keys/values before the (cached) ones; they are not cached.
  `sites` (a family's site hooks): "keys" and "values" transform the keys and values before the KV cache.
  Decoder-only models add: `num_kv_heads` (grouped-query attention: key/value kernels and the cache have that many
  heads), `rope` (rotary embeddings of queries and keys at `positions`), `logits_scale` (multiplies q·k), and a
  cache that is `prefill`ed with a whole sequence and then written at each row's own position.
  `static_kv` (cross-attention): the keys and values depend only on `inputs_kv`, which a decode keeps. When the
  `ENCODED_KV` collection is mutable (outside `init`) they are written to it, after the sites and the prefix,
  head-major ([batch, heads, length, head_dim]); when it holds them they are read from it and the key/value
  projections do not run. Either way the attention is the same, up to float32 rounding.
  """

  num_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  fused: bool = False
  sites: Mapping[str, Callable[..., nn.Module]] | None = None
  num_kv_heads: int | None = None
  rope: Rope | None = None
  logits_scale: float = 1.0

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, mask: Array | None, bias: Array | None = None,
               *, deterministic: bool = True, decode: bool = False,
               prefix_kv: tuple[Array, Array] | None = None, prefill: bool = False,
               positions: Array | None = None, static_kv: bool = False) -> Array:
    """`positions` [B, q]: the queries' absolute positions (rotary embeddings; with `decode`, where each row
    writes its key and value in the cache)."""
    if static_kv and (decode or prefill or self.rope is not None):
      raise ValueError("static_kv (keys and values kept over a decode) is for cross-attention: no KV cache "
                       "(decode, prefill) and no rotary embeddings.")
    kv_heads = self.num_kv_heads or self.num_heads
    hk = self.num_heads * self.head_dim
    base_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
    query_divisor = np.sqrt(self.head_dim) if self.logits_scale == 1.0 else 1.0
    query_init = lambda key, shape, dtype: base_init(key, shape, dtype) / query_divisor
    proj = lambda heads, **kw: Projection(heads * self.head_dim, ("embed", "joined_kv"), dtype=self.dtype, **kw)
    split = lambda x: x.reshape(x.shape[:-1] + (-1, self.head_dim))
    q = split(proj(self.num_heads, kernel_init=query_init, name="query")(inputs_q))
    q = constrain(q, ("batch", "length", "heads", "kv"))
    stored = static_kv and self.has_variable(ENCODED_KV, "keys")
    if stored:  # head-major, the prefix included
      k, v = self.get_variable(ENCODED_KV, "keys"), self.get_variable(ENCODED_KV, "values")
      if prefix_kv is not None:
        mask, bias = pad_prefix_positions(prefix_kv[0].shape[0], mask, bias)
    else:
      k = split(proj(kv_heads, kernel_init=base_init, name="key")(inputs_kv))
      v = split(proj(kv_heads, kernel_init=base_init, name="value")(inputs_kv))
      k = constrain(k, ("batch", "length", "heads", "kv"))
      v = constrain(v, ("batch", "length", "heads", "kv"))
      k = apply_site(self.sites, "keys", k)
      v = apply_site(self.sites, "values", v)
      if self.rope is not None:
        if positions is None:
          raise ValueError("Rotary attention needs the queries' positions; pass positions=[B, length].")
        q, k = self.rope(q, positions), self.rope(k, positions)
      if decode or prefill:
        k, v, mask, bias = self._update_cache(k, v, mask, bias, prefill, positions if decode else None)
      if kv_heads != self.num_heads:
        k, v = (jnp.repeat(x, self.num_heads // kv_heads, axis=2) for x in (k, v))
      if prefix_kv is not None:
        k, v, mask, bias = prepend_prefix(prefix_kv, k, v, mask, bias)
      if static_kv and self.is_mutable_collection(ENCODED_KV) and not self.is_initializing():
        to_head_major = lambda x: constrain(x.transpose(0, 2, 1, 3), ("batch", "heads", "length", "kv"))
        self.put_variable(ENCODED_KV, "keys", to_head_major(k))
        self.put_variable(ENCODED_KV, "values", to_head_major(v))

    attn_bias = None
    if mask is not None:
      attn_bias = jnp.where(mask, 0.0, NEG_INF).astype(self.dtype)
    if bias is not None:
      attn_bias = bias.astype(self.dtype) if attn_bias is None else attn_bias + bias.astype(self.dtype)

    head_major = stored or (self.fused and jax.default_backend() in HEAD_MAJOR_PLATFORMS)
    if self.fused and not head_major and (deterministic or self.dropout_rate == 0.0):
      out = jax.nn.dot_product_attention(q, k, v, bias=attn_bias, scale=self.logits_scale)
    else:
      spec = "bhqd,bhkd->bhqk" if head_major else "bqhd,bkhd->bhqk"
      if head_major:
        q = q.transpose(0, 2, 1, 3)
        if not stored:
          k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
      logits = jnp.einsum(spec, q, k)
      if self.logits_scale != 1.0:
        logits = logits * jnp.asarray(self.logits_scale, logits.dtype)
      if attn_bias is not None:
        logits = logits + attn_bias
      weights = jax.nn.softmax(logits).astype(self.dtype)
      if not deterministic and self.dropout_rate > 0.0:
        keep = 1.0 - self.dropout_rate
        drop_rng = self.make_rng("dropout")
        keep_mask = jax.random.bernoulli(drop_rng, keep, weights.shape[:-2] + (1, weights.shape[-1]))
        weights = weights * (keep_mask / keep).astype(self.dtype)
      if head_major:
        out = jnp.einsum("bhqk,bhkd->bhqd", weights, v).transpose(0, 2, 1, 3)
      else:
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    out = out.reshape(out.shape[:-2] + (hk,))
    return Projection(inputs_q.shape[-1], ("joined_kv", "embed"), kernel_init=base_init, dtype=self.dtype,
                      name="out")(out)

  def _update_cache(self, k: Array, v: Array, mask: Array | None, bias: Array | None, prefill: bool = False,
                    positions: Array | None = None):
    """Write one step's key/value at `cache_index` (or at each row's `positions`); the first call (init) only
    allocates the cache, and `prefill` writes a whole sequence and leaves the attention as it is."""
    is_initialized = self.has_variable("cache", "cached_key")
    cached_key = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, dtype=jnp.int32))
    if not is_initialized:
      return k, v, mask, bias
    batch, max_len = cached_key.value.shape[:2]
    if prefill:
      if k.shape[1] > max_len:
        raise ValueError(f"Prefilling {k.shape[1]} positions into a cache of length {max_len}; initialise the "
                         "cache with the full decoding length.")
      cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, k.astype(cached_key.value.dtype),
                                                      (0, 0, 0, 0))
      cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, v.astype(cached_value.value.dtype),
                                                        (0, 0, 0, 0))
      return k, v, mask, bias
    if k.shape[1] != 1:
      raise ValueError(f"Decoding feeds one token per step; got a query of length {k.shape[1]}.")
    if positions is not None:  # each row writes at its own position (a prefilled cache)
      row_index = positions[:, 0]
      at = (jnp.arange(max_len)[None, :] == row_index[:, None])[:, :, None, None]
      cached_key.value = jnp.where(at, k, cached_key.value)
      cached_value.value = jnp.where(at, v, cached_value.value)
      step_mask = (jnp.arange(max_len)[None, :] <= row_index[:, None])[:, None, None, :]
      mask = step_mask if mask is None else mask & step_mask
      return cached_key.value, cached_value.value, mask, bias
    idx = cache_index.value
    cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, k, (0, idx, 0, 0))
    cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, v, (0, idx, 0, 0))
    cache_index.value = idx + 1
    step_mask = (jnp.arange(max_len) <= idx)[None, None, None, :]
    step_mask = jnp.broadcast_to(step_mask, (batch, 1, 1, max_len))
    mask = step_mask if mask is None else mask & step_mask
    return cached_key.value, cached_value.value, mask, bias
