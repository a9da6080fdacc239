"""IA³ (Liu et al. 2022, arXiv 2205.05638) as site hooks: learned vectors rescale activations inside every layer.

`IA3Scaling` multiplies the activation at its site by a vector over its last axes: the keys and values of every
attention (`k_conv`, `v_conv`: [heads, head_dim]) and the gated hidden of every MLP (`intermediate_conv`: [mlp]),
the modules and names Flaxformer uses, so parameter paths match the reference's (`.../attention/k_conv/
ia3_scaling`). The vectors start at ones, so the model computes what the frozen model does until they train.
Select with `families/ia3.gin` (`PromptFamily.site_hooks = @ia3.site_hooks()`).
"""
from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax

from prompt_tuning.models import layers as L

Array = jax.Array
TRAINABLE_REGEXES = (".*/ia3_scaling.*",)
SITE_AXES = {"keys": ("heads", "kv"), "values": ("heads", "kv"), "mlp_hidden": ("mlp",)}


class IA3Scaling(nn.Module):
  """`x` times a learned vector `ia3_scaling` over its last `len(axes)` axes (starts at ones)."""

  axes: tuple[str, ...]

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scaling = L.param(self, "ia3_scaling", nn.initializers.ones, x.shape[-len(self.axes):], self.axes)
    return x * scaling.astype(x.dtype)


def site_hooks() -> dict[str, Callable[..., nn.Module]]:
  """`PromptFamily.site_hooks` for IA³: a scaling at the keys, the values and the MLP hidden of every layer."""
  return {site: functools.partial(IA3Scaling, axes) for site, axes in SITE_AXES.items()}
