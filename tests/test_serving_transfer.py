"""Prompt transfer: SPoT (start from a source prompt) and ATTEMPT (attention over frozen source prompts)."""
from __future__ import annotations

import jax
import numpy as np
import optax
from flax import linen as nn
from flax import traverse_util

import serving_utils as su
from cli_utils import MODEL_FLAGS, TASK_FLAGS, run_cli
from prompt_tuning.runtime.checkpoints.restore import load_params
from prompt_tuning.runtime.optim import merge_trainable, split_trainable
from prompt_tuning.runtime.trainer import init_train_state, make_train_step
from prompt_tuning.serving.transfer import ATTEMPT_TRAINABLE_REGEXES, AttemptPrompt

EXPORTS = "numpy_checkpoints/checkpoint_{step}/encoder.prompt.prompt.{name}"


def _attempt(sources):
  """The tiny model with an ATTEMPT prompt: frozen weights from the checkpoint, the prompt module's fresh."""
  module = AttemptPrompt(sources, su.PROMPT_LENGTH, bottleneck_dim=5)
  model = su.tiny_model(lambda: module)
  tokens = np.ones((1, 4), np.int32)
  fresh = jax.jit(module.init)(jax.random.PRNGKey(1), tokens, np.ones((1, 4, su.WIDTH), np.float32))
  return model, su.with_prompt(su.frozen_params(su.pretrained_checkpoint()), nn.meta.unbox(fresh["params"]))


def test_attempt_gradients_reach_the_scorer_and_target_only():
  model, params = _attempt(su.random_prompts(2))
  _, batch = su.task_batches("cli_test_task")[0]
  grads = jax.jit(jax.grad(lambda p: model.loss_fn(p, batch, None)[0]))(params)["encoder"]["prompt"]["prompt"]
  flat = traverse_util.flatten_dict(grads, sep="/")
  assert not np.any(flat.pop("source_prompts/prompts"))  # the source prompts are frozen inside the module
  assert set(flat) == {"prompt", "scorer/down/kernel", "scorer/down/bias", "scorer/up/kernel", "scorer/up/bias",
                       "scorer/norm/scale", "scorer/norm/bias"}
  assert all(np.any(g) for g in flat.values()), {k: float(np.abs(g).max()) for k, g in flat.items()}
  trainable, _ = split_trainable(params, ATTEMPT_TRAINABLE_REGEXES)
  assert set(traverse_util.flatten_dict(trainable, sep="/")) == {f"encoder/prompt/prompt/{k}" for k in flat}


def test_attempt_short_run_lowers_the_loss_and_keeps_the_rest():
  model, params = _attempt(su.random_prompts(2))
  _, batch = su.task_batches("cli_test_task")[0]
  trainable, frozen = split_trainable(params, ATTEMPT_TRAINABLE_REGEXES)
  optimizer = optax.adam(0.05)
  step = jax.jit(make_train_step(model, optimizer, dropout=False))
  state = init_train_state(trainable, optimizer)
  losses = []
  for _ in range(15):
    state, metrics = step(state, frozen, batch, jax.random.PRNGKey(0))
    losses.append(float(metrics["loss"]))
  assert max(losses[-3:]) < min(losses[:3]), losses
  merged = merge_trainable(state.params, frozen)
  np.testing.assert_array_equal(merged["encoder"]["prompt"]["prompt"]["source_prompts"]["prompts"],
                                params["encoder"]["prompt"]["prompt"]["source_prompts"]["prompts"])


def test_train_cli_spot_start_then_attempt(tmp_path):
  """SPoT: the target prompt starts as the source prompt; ATTEMPT: then only the target and the scorer move."""
  source, *others = su.random_prompts(3, seed=2)
  for name, prompt in [("source", source), ("a", others[0]), ("b", others[1])]:
    np.save(tmp_path / f"{name}.npy", prompt)
  model_dir = tmp_path / "run"
  run_cli("train", [*MODEL_FLAGS, "--gin_file=serving/spot.gin", "--gin_file=serving/attempt.gin",
                    "--gin_file=runs/prompt_finetune.gin", *TASK_FLAGS, f"--gin.MODEL_DIR='{model_dir}'",
                    f"--gin.INITIAL_CHECKPOINT_PATH='{su.pretrained_checkpoint()}'", "--gin.TRAIN_STEPS=5",
                    "--gin.BATCH_SIZE=4", f"--gin.PROMPT_LENGTH={su.PROMPT_LENGTH}", "--gin.EVAL_PERIOD=0",
                    "--gin.DROPOUT_RATE=0.0", "--gin.ATTEMPT_BOTTLENECK_DIM=5",
                    f"--gin.SOURCE_PROMPT='{tmp_path / 'source.npy'}'",
                    f"--gin.SOURCE_PROMPTS={[str(tmp_path / 'a.npy'), str(tmp_path / 'b.npy')]}"], tmp_path)
  start = model_dir / EXPORTS.format(step=3, name="prompt")  # saved before the first step
  np.testing.assert_array_equal(np.load(start), source)
  assert not np.array_equal(np.load(model_dir / EXPORTS.format(step=5, name="prompt")), source)
  scorer = EXPORTS.format(step="{step}", name="scorer.up.kernel")
  assert not np.array_equal(np.load(model_dir / scorer.format(step=3)), np.load(model_dir / scorer.format(step=5)))
  trained = traverse_util.flatten_dict(load_params(str(model_dir / "checkpoint_5"))[0], sep="/")
  assert all(k.startswith(("encoder/prompt/prompt/prompt", "encoder/prompt/prompt/scorer/")) for k in trained)
