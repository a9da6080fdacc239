"""Helpers shared by the prompt-family tests (this file holds no tests): a small model, a batch, short training."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from prompt_tuning.families import count
from prompt_tuning.models import EncoderDecoder, get_config
from prompt_tuning.runtime import optim
from prompt_tuning.runtime.models import EncoderDecoderModel
from prompt_tuning.runtime.trainer import init_train_state, make_train_step

VOCAB = 64
ENC = jnp.array([[60, 5, 6, 7, 8, 1, 0, 0], [61, 9, 10, 11, 1, 0, 0, 0], [60, 12, 13, 1, 0, 0, 0, 0],
                 [61, 14, 15, 16, 17, 18, 1, 0]], jnp.int32)
TGT = jnp.array([[3, 4, 1, 0], [6, 1, 0, 0], [3, 9, 2, 1], [7, 8, 1, 0]], jnp.int32)
BATCH = {"encoder_input_tokens": ENC, "decoder_target_tokens": TGT,
         "decoder_input_tokens": jnp.pad(TGT, ((0, 0), (1, 0)))[:, :-1],
         "decoder_loss_weights": (TGT > 0).astype(jnp.int32)}
SENTINEL_VOCAB = 62  # ENC[:, 0] = 60, 61 are the sentinels of tasks 1 and 0


def config(**overrides: Any):
  """A small float32 T5 1.1 (d 16, 2 heads of 8, 2+2 layers) over a 64-id vocabulary."""
  return get_config("tiny", dtype=jnp.float32, vocab_size=VOCAB, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                    **overrides)


def init(module: EncoderDecoder, seed: int = 0, batch: dict | None = None) -> dict:
  batch = batch or BATCH
  variables = module.init(jax.random.PRNGKey(seed), batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                          batch["decoder_target_tokens"])
  return nn.meta.unbox(variables["params"])


def logits(module: EncoderDecoder, params: dict, batch: dict | None = None) -> np.ndarray:
  batch = batch or BATCH
  return np.asarray(module.apply({"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                                 batch["decoder_target_tokens"]))


def new_paths(module: EncoderDecoder) -> set[str]:
  """Parameter paths the family adds to the plain model."""
  flat = lambda m: set(traverse_util.flatten_dict(count.abstract_params(m), sep="/"))
  return flat(module) - flat(count.without_prompts(module))


def train(module: EncoderDecoder, regexes: Sequence[str], steps: int = 30, lr: float = 0.05,
          batch: dict | None = None, params: dict | None = None):
  """Train with the real train step (Adafactor, no weight decay) on one batch.

  Returns (losses, trainable before, trainable after, frozen before, frozen after).
  """
  batch = batch or BATCH
  model = EncoderDecoderModel(module)
  params = params if params is not None else init(module)
  trainable, frozen = optim.split_trainable(params, regexes)
  frozen_before = jax.tree_util.tree_map(np.array, frozen)
  tx = optim.adafactor(lr, weight_decay_rate=None)
  state = init_train_state(jax.tree_util.tree_map(jnp.array, trainable), tx)
  step = jax.jit(make_train_step(model, tx, dropout=False))
  losses = []
  for _ in range(steps):
    state, metrics = step(state, frozen, batch, jax.random.PRNGKey(0))
    losses.append(float(metrics["loss"]))
  return losses, trainable, state.params, frozen_before, frozen


def assert_trains_only_family(module: EncoderDecoder, regexes: Sequence[str], steps: int = 30, lr: float = 0.05,
                              **kwargs: Any) -> list[float]:
  """The family's regexes select exactly its new parameters; training moves each of them, lowers the loss and
  leaves every frozen parameter bit-identical. Returns the losses."""
  params = kwargs.pop("params", None) or init(module)
  trainable, _ = optim.split_trainable(params, regexes)
  assert set(traverse_util.flatten_dict(trainable, sep="/")) == new_paths(module)
  losses, before, after, frozen_before, frozen_after = train(module, regexes, steps, lr, params=params, **kwargs)
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0] - 1e-3, losses
  flat_before = traverse_util.flatten_dict(before, sep="/")
  for path, value in traverse_util.flatten_dict(after, sep="/").items():
    assert not np.array_equal(np.asarray(value), np.asarray(flat_before[path])), f"{path} did not train"
  jax.tree_util.tree_map(np.testing.assert_array_equal, frozen_before, jax.tree_util.tree_map(np.asarray,
                                                                                              frozen_after))
  return losses
