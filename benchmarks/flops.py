"""Analytic matmul FLOPs of a T5 1.1 (or decoder-only) train step, counted from the shapes, and XLA's own count.

Only matrix multiplications are counted (2·m·n·k each); XLA's cost analysis also counts element-wise work
(norms, softmax, GELU, the optimizer), so it reads a few per cent higher on realistic shapes.

Backward cost per matmul, in multiples of its forward cost:
  * prompt tuning: one per operand that lies on a path from the prompt to the loss (the weights are frozen, so
    no weight gradients). Everything in the encoder depends on the prompt; in the decoder, the first layer's
    self-attention and cross-attention query do not.
  * model tuning: two (input and weight gradients, or both operands of an activation-activation product).
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from benchmarks.shapes import StepShape

if TYPE_CHECKING:
  from prompt_tuning.models.config import DecoderOnlyConfig, T5Config

MODES = ("forward", "prompt", "model")


@dataclasses.dataclass(frozen=True)
class Matmul:
  name: str
  flops: float  # forward FLOPs over the whole batch
  prompt_operands: int  # operands on a path from the prompt to the loss: 0, 1 or 2


def matmuls(config: T5Config, shape: StepShape) -> list[Matmul]:
  """Every matrix multiplication of one forward pass (per stack, summed over its layers)."""
  b, s, t = shape.batch, shape.encoder_length, shape.target_length
  d, hk, mlp = config.emb_dim, config.num_heads * config.head_dim, config.mlp_dim
  n_wi = len(config.mlp_activations)
  enc_tokens, dec_tokens = b * s, b * t
  proj = lambda tokens, k, n: 2.0 * tokens * k * n
  attn = lambda q_len, k_len: 2.0 * b * q_len * k_len * hk  # q·kᵀ or weights·v, all heads
  le, ld = config.num_encoder_layers, config.num_decoder_layers
  out = [
      Matmul("encoder/qkv", le * 3 * proj(enc_tokens, d, hk), 1),
      Matmul("encoder/attention", le * 2 * attn(s, s), 2),
      Matmul("encoder/out", le * proj(enc_tokens, hk, d), 1),
      Matmul("encoder/mlp", le * (n_wi + 1) * proj(enc_tokens, d, mlp), 1),
  ]
  # Decoder layer 0 before its cross-attention does not depend on the prompt; layers 1.. do.
  first, rest = 1, ld - 1
  out += [
      Matmul("decoder/self_qkv+out/layer0", first * 4 * proj(dec_tokens, d, hk), 0),
      Matmul("decoder/self_attention/layer0", first * 2 * attn(t, t), 0),
      Matmul("decoder/self_qkv+out", rest * 4 * proj(dec_tokens, d, hk), 1),
      Matmul("decoder/self_attention", rest * 2 * attn(t, t), 2),
      Matmul("decoder/cross_q/layer0", first * proj(dec_tokens, d, hk), 0),
      Matmul("decoder/cross_q", rest * proj(dec_tokens, d, hk), 1),
      Matmul("decoder/cross_kv", ld * 2 * proj(enc_tokens, d, hk), 1),
      Matmul("decoder/cross_scores/layer0", first * attn(t, s), 1),  # only the key side depends
      Matmul("decoder/cross_scores", rest * attn(t, s), 2),
      Matmul("decoder/cross_values", ld * attn(t, s), 2),
      Matmul("decoder/cross_out", ld * proj(dec_tokens, hk, d), 1),
      Matmul("decoder/mlp", ld * (n_wi + 1) * proj(dec_tokens, d, mlp), 1),
      Matmul("logits", proj(dec_tokens, d, config.vocab_size), 1),
  ]
  return out


def decoder_only_matmuls(config: DecoderOnlyConfig, shape: StepShape) -> list[Matmul]:
  """Every matrix multiplication of one forward pass of a decoder-only model over prompt + inputs + targets.

  Every position follows the prompt, so everything depends on it; the head reads the non-prompt positions only.
  Grouped-query attention shares key/value heads, so its key/value projections are narrower.
  """
  b, real = shape.batch, shape.input_length + shape.target_length
  s = shape.prompt_length + real
  d, hq, hkv = config.emb_dim, config.num_heads * config.head_dim, config.kv_heads * config.head_dim
  n_wi, layers, tokens = len(config.mlp_activations), config.num_layers, b * s
  proj = lambda rows, k, n: 2.0 * rows * k * n
  return [
      Matmul("decoder/q+out", layers * 2 * proj(tokens, d, hq), 1),
      Matmul("decoder/kv", layers * 2 * proj(tokens, d, hkv), 1),
      Matmul("decoder/attention", layers * 2 * 2.0 * b * s * s * hq, 2),
      Matmul("decoder/mlp", layers * (n_wi + 1) * proj(tokens, d, config.mlp_dim), 1),
      Matmul("logits", proj(b * real, d, config.vocab_size), 1),
  ]


def step_flops(config: T5Config | DecoderOnlyConfig, shape: StepShape, mode: str) -> float:
  """Matmul FLOPs of a forward pass ("forward"), a prompt-tuning step ("prompt") or a model-tuning step."""
  if mode not in MODES:
    raise ValueError(f"mode={mode!r} is not one of {MODES}.")
  is_decoder_only = getattr(config, "num_encoder_layers", None) is None
  ops = decoder_only_matmuls(config, shape) if is_decoder_only else matmuls(config, shape)
  forward = sum(op.flops for op in ops)
  if mode == "forward":
    return forward
  if mode == "prompt":
    if shape.prompt_length == 0:
      raise ValueError("A prompt-tuning step needs StepShape.prompt_length > 0.")
    return forward + sum(op.flops * op.prompt_operands for op in ops)
  return 3.0 * forward


def xla_flops(compiled: Any) -> float:
  """FLOPs that XLA's cost analysis reports for a compiled function (per device when partitioned)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax returns one dict per program
    analysis = analysis[0]
  if not analysis or "flops" not in analysis:
    raise RuntimeError("XLA's cost analysis reported no 'flops' for this backend.")
  return float(analysis["flops"])
