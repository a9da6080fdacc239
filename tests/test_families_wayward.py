"""Wayward prompts (`families/wayward.gin`): the loss adds gamma · distance to the embedded task description."""
from __future__ import annotations

import pathlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cli_tasks
from cli_utils import MODEL_FLAGS, TASK_FLAGS, TESTS_DIR, run_cli, write_tiny_t5x_checkpoint
from prompt_tuning import prompts
from prompt_tuning.families import count, wayward

TEXT = "yes or no?"  # byte vocabulary: one token per byte
BATCH = {"encoder_input_tokens": jnp.array([[5, 6, 7, 1], [8, 9, 1, 0]]),
         "decoder_input_tokens": jnp.array([[0, 10], [0, 11]]),
         "decoder_target_tokens": jnp.array([[10, 1], [11, 1]]),
         "decoder_loss_weights": jnp.ones((2, 2), jnp.float32)}


@pytest.fixture(scope="module")
def frozen_checkpoint(tmp_path_factory) -> pathlib.Path:
  return write_tiny_t5x_checkpoint(tmp_path_factory.mktemp("pretrained"))


def _gin_model(ckpt: pathlib.Path, *bindings: str):
  return count.configured_model(
      ["models/t5_1_1_tiny_prompt.gin", "families/wayward.gin", "byte_vocab_tiny.gin"],
      [f"PROMPT_TEXT='{TEXT}'", f"INITIAL_CHECKPOINT_PATH='{ckpt}'", "ACTIVATION_DTYPE='float32'", *bindings],
      [str(TESTS_DIR / "gin")])


def _target(ckpt: pathlib.Path) -> np.ndarray:
  """The embedding rows of the text's byte tokens, read from the checkpoint."""
  embedding = prompts.t5x_load(str(ckpt))()
  ids = cli_tasks.VOCAB.encode(TEXT)
  assert len(ids) == len(TEXT)
  return embedding[ids]


def test_gin_builds_the_wayward_model_and_its_loss(frozen_checkpoint):
  target = _target(frozen_checkpoint)
  with _gin_model(frozen_checkpoint, "WAYWARD_GAMMA=0.5") as (model, regexes):
    (term,) = model.family.loss_terms
    assert isinstance(term, wayward.WaywardLoss) and regexes == [".*/prompt/.*"]
    np.testing.assert_array_equal(term.discrete_prompt, target)
    shapes = {k: v.shape for k, v in BATCH.items()}
    params = nn.meta.unbox(model.get_initial_variables(jax.random.PRNGKey(0), shapes)["params"])
    prompt = params["encoder"]["prompt"]["prompt"]["prompt"]
    assert prompt.shape == (len(TEXT), 4)  # PROMPT_LENGTH follows the text
    np.testing.assert_allclose(prompt, target, rtol=1e-6)  # starts from the embedded text (from_string.gin)
    total, metrics = model.loss_fn(params, BATCH, None)
    assert float(metrics["wayward/distance"]) == 0.0 and float(total) == float(metrics["loss"])
    params["encoder"]["prompt"]["prompt"]["prompt"] = prompt + 0.5  # every row moves by 0.5 in each of 4 dims
    total, metrics = model.loss_fn(params, BATCH, None)
    np.testing.assert_allclose(float(metrics["wayward/distance"]), 4 * 0.25, rtol=1e-5)
    np.testing.assert_allclose(float(total), float(metrics["loss"]) + 0.5 * 1.0, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["wayward/total_loss"]), float(total), rtol=1e-6)
    grad = jax.grad(lambda p: model.loss_fn(p, BATCH, None)[0])(params)
    assert np.abs(np.asarray(grad["encoder"]["prompt"]["prompt"]["prompt"])).max() > 0


def test_wrong_prompt_length_or_gamma_is_named(frozen_checkpoint):
  with _gin_model(frozen_checkpoint, "PROMPT_LENGTH=3") as (model, _):
    params = nn.meta.unbox(model.get_initial_variables(jax.random.PRNGKey(0), {k: v.shape for k, v in BATCH.items()})
                           ["params"])
    with pytest.raises(ValueError, match=rf"shape \(3, 4\) but the wayward target \({len(TEXT)}, 4\); "
                                         rf"set PROMPT_LENGTH = {len(TEXT)}"):
      model.loss_fn(params, BATCH, None)
  with pytest.raises(ValueError, match=r"WAYWARD_GAMMA=-1.0 is negative"):
    with _gin_model(frozen_checkpoint, "WAYWARD_GAMMA=-1.0") as (model, _):
      del model


def _train(tmp_path: pathlib.Path, ckpt: pathlib.Path, gamma: float) -> tuple[list[float], np.ndarray]:
  model_dir = tmp_path / f"run_{gamma}"
  flags = [*MODEL_FLAGS, "--gin_file=families/wayward.gin", "--gin_file=runs/prompt_finetune.gin", *TASK_FLAGS,
           f"--gin.PROMPT_TEXT='{TEXT}'", f"--gin.WAYWARD_GAMMA={gamma}", f"--gin.INITIAL_CHECKPOINT_PATH='{ckpt}'",
           f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=19", "--gin.BATCH_SIZE=8", "--gin.STATS_PERIOD=8",
           "--gin.SAVE_PERIOD=16", "--gin.EVAL_PERIOD=0", "--gin.DROPOUT_RATE=0.0"]
  proc = run_cli("train", flags, tmp_path)
  losses = [float(x) for x in re.findall(r"step \d+/\d+ +loss ([\d.]+)", proc.stderr)]
  return losses, np.load(model_dir / "numpy_checkpoints" / "checkpoint_19" / "encoder.prompt.prompt.prompt.npy")


def test_train_cli_keeps_the_prompt_near_the_text_as_gamma_says(tmp_path, frozen_checkpoint):
  """Same run twice: without the pull (gamma 0) the prompt wanders further from the embedded text."""
  target = _target(frozen_checkpoint)
  free_losses, free = _train(tmp_path, frozen_checkpoint, 0.0)
  pulled_losses, pulled = _train(tmp_path, frozen_checkpoint, 1.0)
  assert free_losses[1] < free_losses[0], free_losses
  distance = lambda p: float(np.sum(np.square(p - target)) / len(p))
  assert distance(pulled) < 0.5 * distance(free), (distance(pulled), distance(free))
