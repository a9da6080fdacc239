"""Run by test_trainer.py in a subprocess: the prompt-tuning train step on a (data 4 x model 2) mesh of 8 simulated
CPU devices vs one device. Prints one JSON line: the losses and prompts of both runs."""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import prompts
from prompt_tuning.family import PromptFamily
from prompt_tuning.models import EncoderDecoder, get_config
from prompt_tuning.runtime import optim
from prompt_tuning.runtime.models import EncoderDecoderModel
from prompt_tuning.runtime.partitioning import Partitioner
from prompt_tuning.runtime.state_init import build_run_params
from prompt_tuning.runtime.trainer import init_train_state, make_train_step

BATCH, ENC_LEN, DEC_LEN = 8, 6, 4


def make_batch(seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, 50, (BATCH, ENC_LEN)).astype(np.int32)
  enc[:, -2:] = 0
  tgt = rng.integers(2, 50, (BATCH, DEC_LEN)).astype(np.int32)
  tgt[::2, -1] = 0
  return {"encoder_input_tokens": enc, "decoder_target_tokens": tgt,
          "decoder_input_tokens": np.pad(tgt, ((0, 0), (1, 0)))[:, :-1],
          "decoder_loss_weights": (tgt > 0).astype(np.float32)}


def run(devices, **mesh: Any) -> tuple[list[float], np.ndarray]:
  cfg = get_config("tiny", dtype=jnp.float32, vocab_size=128, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=16)
  module = EncoderDecoder(cfg, PromptFamily(lambda: prompts.PromptedInputs(prompts.Prompt(4))))
  model = EncoderDecoderModel(module)
  partitioner = Partitioner(devices=devices, **mesh)
  shapes = {"encoder_input_tokens": (BATCH, ENC_LEN), "decoder_input_tokens": (BATCH, DEC_LEN)}
  run_params = build_run_params(model, partitioner, shapes, None, [".*/prompt/.*"], jax.random.PRNGKey(0))
  tx = optim.adafactor(0.3)
  state = init_train_state(run_params.trainable, tx)
  step = jax.jit(make_train_step(model, tx, dropout=False), donate_argnums=(0,))
  losses = []
  with partitioner.activation_rules_context():
    for i in range(3):
      state, metrics = step(state, run_params.frozen, partitioner.shard_batch(make_batch(i)), jax.random.PRNGKey(1))
      losses.append(float(metrics["loss"]))
  prompt = np.asarray(state.params["encoder"]["prompt"]["prompt"]["prompt"])
  return losses, prompt


def main() -> None:
  assert jax.device_count() == 8, jax.devices()
  single = run(jax.devices()[:1], num_partitions=1)
  sharded = run(jax.devices(), num_partitions=2)
  multi_slice = run(jax.devices(), ici_mesh_shape=(2, 2, 2), dcn_mesh_shape=(1, 1, 1))  # ('replica','data','model')
  print(json.dumps({"single_losses": single[0], "sharded_losses": sharded[0], "multi_slice_losses": multi_slice[0],
                    "single_prompt": single[1].tolist(), "sharded_prompt": sharded[1].tolist(),
                    "multi_slice_prompt": multi_slice[1].tolist()}))


if __name__ == "__main__":
  main()
  sys.stdout.flush()
