"""The benchmarked batch shape and random tokens for it (numpy only, so the PyTorch peer needs no JAX)."""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class StepShape:
  """One training batch: `batch` examples of `input_length` + `target_length` tokens, plus the prompt."""

  batch: int = 8
  input_length: int = 128
  target_length: int = 8
  prompt_length: int = 100

  def __post_init__(self):
    for name in ("batch", "input_length", "target_length"):
      if getattr(self, name) <= 0:
        raise ValueError(f"StepShape.{name}={getattr(self, name)} must be positive.")
    if self.prompt_length < 0:
      raise ValueError(f"StepShape.prompt_length={self.prompt_length} must be >= 0 (0: no prompt).")

  @property
  def encoder_length(self) -> int:
    return self.input_length + self.prompt_length

  @property
  def tokens(self) -> int:
    """Training tokens per step (inputs + targets; the prompt is not data)."""
    return self.batch * (self.input_length + self.target_length)

  def without_prompt(self) -> "StepShape":
    return dataclasses.replace(self, prompt_length=0)


def random_batch(shape: StepShape, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Unpadded random tokens (ids 2.. so none is padding or EOS); decoder inputs are the shifted targets."""
  rng = np.random.default_rng(seed)
  inputs = rng.integers(2, vocab_size, (shape.batch, shape.input_length), dtype=np.int32)
  targets = rng.integers(2, vocab_size, (shape.batch, shape.target_length), dtype=np.int32)
  decoder_inputs = np.concatenate([np.zeros((shape.batch, 1), np.int32), targets[:, :-1]], axis=1)
  return {"encoder_input_tokens": inputs, "decoder_input_tokens": decoder_inputs,
          "decoder_target_tokens": targets, "decoder_loss_weights": np.ones(targets.shape, np.float32)}


def random_decoder_batch(shape: StepShape, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """The same tokens as prefix-LM features of a decoder-only model (`seqio.PrefixLMFeatureConverter`): one
  sequence of inputs then targets, the inputs mutually visible, loss on the targets only."""
  pair = random_batch(shape, vocab_size, seed)
  sequence = np.concatenate([pair["encoder_input_tokens"], pair["decoder_target_tokens"]], axis=1)
  positions = np.arange(sequence.shape[1])[None, :]
  ones = np.ones_like(sequence)
  return {"decoder_target_tokens": sequence, "decoder_input_tokens": np.pad(sequence, ((0, 0), (1, 0)))[:, :-1],
          "decoder_causal_attention": ones * (positions <= shape.input_length),
          "decoder_loss_weights": (ones * (positions >= shape.input_length)).astype(np.float32)}
