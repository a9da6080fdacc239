"""Convert parameter trees between unrolled layers (`layers_0`, `layers_1`, ...) and scanned `layers`."""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

import jax

_LAYER = re.compile(r"^layers_(\d+)$")


def _stack_one(stack: Mapping[str, Any]) -> dict[str, Any]:
  indexed = sorted((int(m.group(1)), k) for k in stack if (m := _LAYER.match(k)))
  if not indexed:
    return dict(stack)
  if [i for i, _ in indexed] != list(range(len(indexed))):
    raise ValueError(f"Layer names {[k for _, k in indexed]} are not contiguous from layers_0.")
  out = {k: v for k, v in stack.items() if not _LAYER.match(k)}
  layer_trees = [stack[k] for _, k in indexed]
  out["layers"] = jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *layer_trees)
  return out


def _unstack_one(stack: Mapping[str, Any]) -> dict[str, Any]:
  if "layers" not in stack:
    return dict(stack)
  out = {k: v for k, v in stack.items() if k != "layers"}
  leaves = jax.tree_util.tree_leaves(stack["layers"])
  for i in range(leaves[0].shape[0]):
    out[f"layers_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], stack["layers"])
  return out


def stack_layers(params: Mapping[str, Any]) -> dict[str, Any]:
  """Unrolled (T5X checkpoint) tree -> tree for `T5Config(scan_layers=True)`."""
  return {k: _stack_one(v) if k in ("encoder", "decoder") else v for k, v in params.items()}


def unstack_layers(params: Mapping[str, Any]) -> dict[str, Any]:
  """Scanned tree -> unrolled tree with Flaxformer names (for export to T5X checkpoints)."""
  return {k: _unstack_one(v) if k in ("encoder", "decoder") else v for k, v in params.items()}
