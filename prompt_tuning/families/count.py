"""What a prompt family costs: trainable parameters (counted on the real tree) and extra forward FLOPs (XLA's count).

`family_costs(module, regexes, ...)` compares a configured `EncoderDecoder` with the same model without any
prompt, per-layer hook or first pass; `costs_from_gin(files, bindings)` does it for a gin configuration
(model gin + family gin), as the comparison script does. FLOPs are those of a teacher-forced forward pass;
training adds the backward pass through the whole frozen model (about twice the forward) for every family.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator, Sequence

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import gin_utils
from prompt_tuning.models.t5 import EncoderDecoder
from prompt_tuning.runtime.optim import trainable_mask


@dataclasses.dataclass(frozen=True)
class FamilyCost:
  trainable_params: int
  total_params: int
  forward_flops: float  # one teacher-forced forward pass of the whole batch
  extra_flops: float  # forward_flops minus the same model without any prompt

  @property
  def extra_flops_percent(self) -> float:
    return 100.0 * self.extra_flops / max(self.forward_flops - self.extra_flops, 1.0)


def _inputs(batch_size: int, input_length: int, target_length: int) -> tuple[jax.ShapeDtypeStruct, ...]:
  return (jax.ShapeDtypeStruct((batch_size, input_length), jnp.int32),
          jax.ShapeDtypeStruct((batch_size, target_length), jnp.int32))


def abstract_params(module: EncoderDecoder, input_length: int = 8, target_length: int = 4) -> Any:
  enc, dec = _inputs(1, input_length, target_length)
  init = lambda e, d: module.init(jax.random.PRNGKey(0), e, d, d)
  return nn.meta.unbox(jax.eval_shape(init, enc, dec)["params"])


def parameter_counts(module: EncoderDecoder, trainable_regexes: Sequence[str]) -> tuple[int, int]:
  """(trainable, total) parameter counts; trainable = paths fully matching one of `trainable_regexes`."""
  params = abstract_params(module)
  mask = trainable_mask(params, trainable_regexes)
  sizes = [int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params)]
  return sum(s for s, m in zip(sizes, jax.tree_util.tree_leaves(mask)) if m), sum(sizes)


def forward_flops(module: EncoderDecoder, batch_size: int, input_length: int, target_length: int) -> float:
  """FLOPs of one forward pass as XLA counts them after compilation (no arrays are allocated)."""
  enc, dec = _inputs(batch_size, input_length, target_length)
  params = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract_params(module))
  fn = jax.jit(lambda p, e, d: module.apply({"params": p}, e, d, d))
  analysis = fn.lower(params, enc, dec).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
    analysis = analysis[0]
  return float(analysis["flops"])


def without_prompts(module: EncoderDecoder) -> EncoderDecoder:
  """The frozen model alone: no prompt family (prompt modules, hooks, visibility flags, IA³ vectors)."""
  return module.clone(family=None)


def family_costs(module: EncoderDecoder, trainable_regexes: Sequence[str], batch_size: int = 1,
                 input_length: int = 64, target_length: int = 4) -> FamilyCost:
  """Parameters and forward FLOPs of `module`, and the FLOPs it adds to the prompt-free model."""
  trainable, total = parameter_counts(module, trainable_regexes)
  flops = forward_flops(module, batch_size, input_length, target_length)
  base = forward_flops(without_prompts(module), batch_size, input_length, target_length)
  return FamilyCost(trainable, total, flops, flops - base)


def _configured(model: Any, trainable_regexes: Sequence[str]) -> tuple[Any, Sequence[str]]:
  return model, trainable_regexes


@contextlib.contextmanager
def configured_model(gin_files: Sequence[str], bindings: Sequence[str] = (),
                     search_paths: Sequence[str] = ()) -> Iterator[tuple[Any, Sequence[str]]]:
  """(MODEL, TRAINABLE_REGEXES) of model + family gin files (no run gin needed), with the config active:
  module factories read gin when the module is set up, so use the model inside the `with` block."""
  gin.clear_config()
  try:
    gin_utils.parse_gin(gin_files, list(bindings) + [
        "from __gin__ import dynamic_registration", f"import {__name__} as family_count",
        "family_count._configured.model = %MODEL",
        "family_count._configured.trainable_regexes = %TRAINABLE_REGEXES"], search_paths)
    yield gin.get_configurable(_configured)()
  finally:
    gin.clear_config()


def costs_from_gin(gin_files: Sequence[str], bindings: Sequence[str] = (), search_paths: Sequence[str] = (),
                   **kwargs: Any) -> FamilyCost:
  """`family_costs` of the model configured by model + family gin files."""
  with configured_model(gin_files, bindings, search_paths) as (model, regexes):
    return family_costs(model.module, regexes, **kwargs)
