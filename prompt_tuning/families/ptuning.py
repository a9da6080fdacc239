"""P-tuning (v1; Liu et al. 2021, "GPT Understands, Too"): the prompt is a small encoder's output over free
embeddings, a reparameterisation that is dropped after training.

`PTuningPrompt` is the `PROMPT` of the usual `prompts.PromptedInputs` (`families/ptuning.gin`): P trainable
embeddings `encoder/prompt/prompt/embedding` [P, d] go through
* `encoder='lstm'` (P-tuning's prompt encoder): a bidirectional LSTM of `lstm_layers` layers (d/2 units per
  direction, so its output is d wide), then an MLP Dense(d) -> ReLU -> Dense(d);
* `encoder='mlp'`: Dense(h) -> ReLU -> Dense(h) -> ReLU -> Dense(d), h = `hidden_dim` (default d).
The [P, d] output is the prompt, the same for every example. After training, `final_prompt` computes it once;
`python -m prompt_tuning.scripts.export_prompt` writes it as a plain [P, d] `.npy` that the plain prompt model
loads (`prompts/from_file.gin`, `runs/prompt_eval.gin`'s `PROMPT_FILE`) and that gives the same predictions.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import prompts
from prompt_tuning.models.t5 import EncoderDecoder

Array = jax.Array
Initializer = Callable[..., Array]
ENCODERS = ("lstm", "mlp")


def _dense(features: int, name: str) -> nn.Dense:
  return nn.Dense(features, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                                     ("prompt_embed", "prompt_mlp")),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("prompt_mlp",)), name=name)


class LSTMLayer(nn.Module):
  """One LSTM direction over a [P, d_in] sequence: gates i, f, g, o from x W + h U + b; returns [P, units]."""

  units: int
  reverse: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d_in, n = x.shape[-1], self.units
    w = self.param("input_kernel", nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                                ("prompt_embed", "prompt_mlp")), (d_in, 4 * n))
    u = self.param("recurrent_kernel", nn.with_logical_partitioning(nn.initializers.orthogonal(),
                                                                    ("prompt_embed", "prompt_mlp")), (n, 4 * n))
    # The forget gate's bias starts at 1 (a common LSTM initialisation); the others at 0.
    b = self.param("bias", nn.with_logical_partitioning(
        lambda key, shape, dtype=jnp.float32: jnp.zeros(shape, dtype).at[n:2 * n].set(1.0), ("prompt_mlp",)),
                   (4 * n,))
    inputs = x @ w + b  # [P, 4n]

    def step(carry: tuple[Array, Array], z: Array) -> tuple[tuple[Array, Array], Array]:
      h, c = carry
      i, f, g, o = jnp.split(z + h @ u, 4)
      c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
      h = jax.nn.sigmoid(o) * jnp.tanh(c)
      return (h, c), h

    zeros = jnp.zeros((n,), x.dtype)
    _, out = jax.lax.scan(step, (zeros, zeros), inputs, reverse=self.reverse)
    return out


class PTuningPrompt(nn.Module):
  """The [P, d] prompt as the encoder's output over P trainable embeddings (module docstring)."""

  length: int = 100
  encoder: str = "lstm"
  hidden_dim: int | None = None  # the MLP encoder's width (default d)
  lstm_layers: int = 2
  initializer: Initializer = prompts.random_uniform()

  def __post_init__(self):
    if self.encoder not in ENCODERS:
      raise ValueError(f"PTUNING_ENCODER={self.encoder!r} is not a P-tuning prompt encoder; choose one of "
                       f"{list(ENCODERS)}.")
    if self.length <= 0 or (self.hidden_dim is not None and self.hidden_dim <= 0) or self.lstm_layers <= 0:
      raise ValueError(f"PTuningPrompt needs length, hidden_dim and lstm_layers > 0 (got {self.length}, "
                       f"{self.hidden_dim}, {self.lstm_layers}).")
    super().__post_init__()

  @nn.compact
  def final(self, width: int) -> Array:
    """The prompt [P, width] in float32: what training feeds the model, and what `final_prompt` exports."""
    x = self.param("embedding", nn.with_logical_partitioning(self.initializer, prompts.PROMPT_AXES),
                   (self.length, width), jnp.float32)
    if self.encoder == "mlp":
      h = self.hidden_dim or width
      x = nn.relu(_dense(h, "mlp_0")(x))
      x = nn.relu(_dense(h, "mlp_1")(x))
      return _dense(width, "mlp_out")(x)
    if width % 2:
      raise ValueError(f"The bidirectional LSTM encoder splits the model width {width} between two directions: "
                       "it must be even; use PTUNING_ENCODER='mlp'.")
    for layer in range(self.lstm_layers):
      x = jnp.concatenate([LSTMLayer(width // 2, name=f"lstm_{layer}_forward")(x),
                           LSTMLayer(width // 2, reverse=True, name=f"lstm_{layer}_backward")(x)], axis=-1)
    x = nn.relu(_dense(width, "mlp_0")(x))
    return _dense(width, "mlp_out")(x)

  def __call__(self, tokens: Array, embedded: Array, **unused_prompt_inputs: Array) -> Array:
    del tokens
    return self.final(embedded.shape[-1])


def final_prompt(model: EncoderDecoder, params: Mapping[str, Any]) -> np.ndarray:
  """The [P, d] prompt of a model whose input prompt is a `PTuningPrompt`, from (at least) its prompt parameters."""
  embedding = params["encoder"]["prompt"]["prompt"]["embedding"]

  def run(m: EncoderDecoder) -> Array:
    module = getattr(m.encoder.prompt, "prompt", None)
    if not isinstance(module, PTuningPrompt):
      raise ValueError(f"The model's input prompt is {type(module).__name__}, not a PTuningPrompt: pass the "
                       "model gin and families/ptuning.gin the run trained with.")
    return module.final(embedding.shape[-1])

  return np.asarray(model.apply({"params": params}, method=run), np.float32)
