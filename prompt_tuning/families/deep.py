"""Deep prompts: per-layer prompts (P-tuning v2 style) and prefix tuning (Li & Liang 2021).

Both are per-stack hook modules of a `PromptFamily` (`stack_hooks = {'layer_prompts': ..., 'prefix': ...}`):
each stack calls the factory with `stack=StackInfo(...)` and the module returns a dict of arrays with a leading
layer axis (see `prompt_tuning.family`).

* `LayerPrompts` (`encoder/layer_prompts/prompt`, [L-1, P, d]): before encoder layers 1..L-1 the first P
  positions (the input prompt's) are replaced by, or added to, that layer's prompt. Layer 0 reads the input
  prompt, which still comes from `PROMPT_FACTORY`. The decoder gets none.
* `PrefixTuning` (`{encoder,decoder}/prefix/...`): learned keys and values prepended in every layer's
  attention (encoder self-attention, decoder self-attention, cross-attention). They are learned directly, or
  through Li & Liang's reparameterisation (a small embedding fed to a shared MLP); `final_prefixes` /
  `export_final_prefixes` compute the final arrays so a direct-mode module (`exported_dir`) serves them
  without the MLP.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import prompts
from prompt_tuning.family import StackInfo
from prompt_tuning.models.t5 import EncoderDecoder

Array = jax.Array
Initializer = Callable[..., Array]
ATTENTIONS = ("attention", "self_attention", "encoder_decoder_attention")
LAYER_PROMPT_MODES = {"replace": 0.0, "add": 1.0}  # the `keep` factor on the hidden states


def _require_stack(module: nn.Module) -> StackInfo:
  if module.stack is None:
    raise ValueError(f"{type(module).__name__} is a per-stack hook: give it to PromptFamily.stack_hooks as a "
                     "factory (e.g. `{'layer_prompts': @deep.LayerPrompts}`, no parentheses), which passes `stack`.")
  return module.stack


class LayerPrompts(nn.Module):
  """Prompts for encoder layers 1..L-1 that replace (`mode="replace"`) or add to (`"add"`) the prompt positions.

  `initializer` defaults to U[-0.5, 0.5) for "replace" and zeros for "add" (training then starts from plain
  prompt tuning).
  """

  length: int = 10
  mode: str = "replace"
  initializer: Initializer | None = None
  stack: StackInfo | None = None

  def __post_init__(self):
    if self.mode not in LAYER_PROMPT_MODES:
      raise ValueError(f"Unknown layer prompt mode {self.mode!r}; choose one of {sorted(LAYER_PROMPT_MODES)}.")
    if self.length <= 0:
      raise ValueError(f"LayerPrompts.length={self.length} must be positive.")
    super().__post_init__()

  def _check(self, stack: StackInfo) -> None:
    if stack.prompt_length is None or (stack.prompt_combination or "prefix") != "prefix":
      raise ValueError("Per-layer prompts rewrite the input prompt's positions at every layer: they need an input "
                       "prompt (PROMPT_FACTORY) with combination 'prefix'.")
    if stack.prompt_length != self.length:
      raise ValueError(f"Per-layer prompt length {self.length} differs from the input prompt length "
                       f"{stack.prompt_length}; give both PROMPT_LENGTH.")

  @nn.compact
  def __call__(self) -> dict[str, tuple[Array, Array]]:
    stack = _require_stack(self)
    if stack.name != "encoder":
      return {}
    self._check(stack)
    init = self.initializer or (prompts.random_uniform(0.5) if self.mode == "replace" else nn.initializers.zeros)
    n = stack.num_layers - 1
    value = self.param("prompt", nn.with_logical_partitioning(init, ("layers", "prompt", "prompt_embed")),
                       (n, self.length, stack.emb_dim), jnp.float32)
    layer0 = jnp.zeros((1, self.length, stack.emb_dim), jnp.float32)
    keep = jnp.array([1.0] + [LAYER_PROMPT_MODES[self.mode]] * n, jnp.float32)
    return {"inputs": (keep, jnp.concatenate([layer0, value], axis=0))}


class PrefixTuning(nn.Module):
  """Key/value prefixes of `length` positions for every layer of the attentions named in `attentions`.

  Direct mode (`hidden_dim=0`): one parameter per attention, `prefix/<attention>` [L, 2, P, heads*head_dim]
  (2 = keys, values). Reparameterised mode (`hidden_dim>0`, Li & Liang): `prefix/<attention>_embedding`
  [P, embed_dim] goes through `<attention>_mlp_in` (Dense, tanh) and `<attention>_mlp_out` (Dense to
  L*2*heads*head_dim), shared by all layers. `exported_dir` (direct mode) initialises the prefixes from
  `export_final_prefixes` files.
  """

  length: int = 10
  hidden_dim: int = 0
  embed_dim: int | None = None
  attentions: Sequence[str] = ATTENTIONS
  initializer: Initializer = nn.initializers.normal(stddev=0.5)
  exported_dir: str | None = None
  stack: StackInfo | None = None

  def __post_init__(self):
    unknown = sorted(set(self.attentions) - set(ATTENTIONS))
    if unknown:
      raise ValueError(f"PrefixTuning.attentions has unknown names {unknown}; choose from {ATTENTIONS}.")
    if self.length <= 0 or self.hidden_dim < 0:
      raise ValueError(f"PrefixTuning needs length > 0 and hidden_dim >= 0 (got {self.length}, {self.hidden_dim}).")
    if self.exported_dir and self.hidden_dim:
      raise ValueError("Exported prefixes are final values: set PrefixTuning.hidden_dim=0 with exported_dir.")
    super().__post_init__()

  def _shape(self, stack: StackInfo) -> tuple[int, int, int, int]:
    return (stack.num_layers, 2, self.length, stack.num_heads * stack.head_dim)

  def _direct(self, name: str, stack: StackInfo) -> Array:
    init = self.initializer
    if self.exported_dir:
      init = prompts.from_array(prompts.np_load(os.path.join(self.exported_dir, f"{name}.npy")))
    return self.param(name, nn.with_logical_partitioning(init, ("layers", None, "prompt", "prompt_embed")),
                      self._shape(stack), jnp.float32)

  def _reparameterised(self, name: str, stack: StackInfo) -> Array:
    shape = self._shape(stack)
    width = self.embed_dim or stack.emb_dim
    emb = self.param(f"{name}_embedding", nn.with_logical_partitioning(self.initializer, ("prompt", "prompt_embed")),
                     (self.length, width), jnp.float32)
    dense = lambda features, axes, n: nn.Dense(
        features, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]), name=n)
    h = jnp.tanh(dense(self.hidden_dim, ("prompt_embed", "prompt_mlp"), f"{name}_mlp_in")(emb))
    out = dense(int(np.prod(shape)) // self.length, ("prompt_mlp", "prompt_out"), f"{name}_mlp_out")(h)
    # [P, L*2*HD] -> [L, 2, P, HD]
    return out.reshape(self.length, shape[0], 2, shape[3]).transpose(1, 2, 0, 3)

  @nn.compact
  def final(self) -> dict[str, Array]:
    """The final prefixes [L, 2, P, heads*head_dim] per attention of this stack (no reparameterisation)."""
    stack = _require_stack(self)
    make = self._reparameterised if self.hidden_dim else self._direct
    return {name: make(name, stack) for name in stack.attentions if name in self.attentions}

  def __call__(self) -> dict[str, tuple[Array, Array]]:
    stack = _require_stack(self)
    split = lambda x: x.reshape(x.shape[:2] + (stack.num_heads, stack.head_dim))
    return {name: (split(p[:, 0]), split(p[:, 1])) for name, p in self.final().items()}


def final_prefixes(model: EncoderDecoder, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """`{attention: [L, 2, P, heads*head_dim]}` of a model whose family has a `PrefixTuning` stack hook."""

  def run(m: EncoderDecoder) -> dict[str, Array] | None:
    hooks = [getattr(stack, name) for stack in (m.encoder, m.decoder) for name in stack.hook_names]
    prefixes = [h for h in hooks if isinstance(h, PrefixTuning)]
    return {k: v for h in prefixes for k, v in h.final().items()} if prefixes else None

  values = model.apply({"params": params}, method=run)
  if values is None:
    raise ValueError("The model's family has no PrefixTuning stack hook: there are no prefixes to export.")
  return {k: np.asarray(v, np.float32) for k, v in values.items()}


def export_final_prefixes(model: EncoderDecoder, params: Mapping[str, Any], out_dir: str) -> dict[str, str]:
  """Write `final_prefixes` as `<out_dir>/<attention>.npy`; load them with `PrefixTuning(exported_dir=...)`."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {}
  for name, value in final_prefixes(model, params).items():
    paths[name] = os.path.join(out_dir, f"{name}.npy")
    np.save(paths[name], value)
  return paths
