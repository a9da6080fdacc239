"""A new prompt family plugs in through `PromptFamily` alone: a toy family (a prompt scaled by a learned scalar)
written here, in a few lines, trains through the model, the train step and the train CLI without any core edit."""
from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cli_utils import MODEL_FLAGS, TASK_FLAGS, TESTS_DIR, run_cli, write_tiny_t5x_checkpoint
from prompt_tuning import prompts
from prompt_tuning.family import SITES, PromptFamily
from prompt_tuning.models import EncoderDecoder
from test_families_utils import assert_trains_only_family, config, init, logits


# ---------------------------------------------------------------------------------------- the toy family
class ScaledPrompt(nn.Module):
  """A plain prompt times one learned scalar `scale`, which starts at 1."""

  length: int = 3

  @nn.compact
  def __call__(self, tokens: jax.Array, embedded: jax.Array, **unused: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ()), (), jnp.float32)
    return prompts.Prompt(self.length, name="prompt")(tokens, embedded) * scale


TOY = PromptFamily(lambda: prompts.PromptedInputs(ScaledPrompt()), trainable_regexes=[".*/prompt/.*"])
# ----------------------------------------------------------------------------------------------------------


def test_toy_family_adds_its_parameters_and_starts_as_its_plain_prompt():
  toy = EncoderDecoder(config(), TOY)
  params = init(toy)
  assert set(params["encoder"]["prompt"]["prompt"]) == {"scale", "prompt"}
  plain = EncoderDecoder(config(), PromptFamily(lambda: prompts.PromptedInputs(prompts.Prompt(3))))
  plain_params = {**params, "encoder": {**params["encoder"], "prompt": params["encoder"]["prompt"]["prompt"]}}
  np.testing.assert_array_equal(logits(toy, params), logits(plain, plain_params))
  params["encoder"]["prompt"]["prompt"]["scale"] = jnp.float32(2.0)
  assert not np.allclose(logits(toy, params), logits(plain, plain_params), atol=1e-4)


def test_toy_family_trains_alone_through_the_train_step():
  assert_trains_only_family(EncoderDecoder(config(), TOY), TOY.trainable_regexes)


def test_toy_family_trains_from_the_cli(tmp_path):
  """The user's path: a gin file names the toy prompt; the CLI trains it and exports both of its parameters."""
  ckpt = write_tiny_t5x_checkpoint(tmp_path / "pretrained")
  model_dir = tmp_path / "run"
  flags = [*MODEL_FLAGS, "--gin_file=toy_scaled_prompt.gin", "--gin_file=runs/prompt_finetune.gin", *TASK_FLAGS,
           f"--gin.INITIAL_CHECKPOINT_PATH='{ckpt}'", f"--gin.MODEL_DIR='{model_dir}'", "--gin.PROMPT_LENGTH=3",
           "--gin.TRAIN_STEPS=13", "--gin.BATCH_SIZE=8", "--gin.STATS_PERIOD=5", "--gin.SAVE_PERIOD=10",
           "--gin.EVAL_PERIOD=0", "--gin.LEARNING_RATE=0.3"]
  proc = run_cli("train", flags, tmp_path)
  losses = [float(x) for x in re.findall(r"step \d+/\d+ +loss ([\d.]+)", proc.stderr)]
  assert len(losses) == 2 and losses[-1] < losses[0], proc.stderr[-3000:]  # steps 3 (the checkpoint) to 13
  export = model_dir / "numpy_checkpoints" / "checkpoint_13"
  assert {p.name for p in export.glob("*.npy")} == {"encoder.prompt.prompt.scale.npy",
                                                     "encoder.prompt.prompt.prompt.prompt.npy"}
  assert float(np.load(export / "encoder.prompt.prompt.scale.npy")) != 1.0


def test_family_errors_name_the_fix():
  with pytest.raises(ValueError, match=r"unknown sites \['queries'\]"):
    PromptFamily(site_hooks={"queries": lambda **kw: None})
  with pytest.raises(ValueError, match="is a string; give a list"):
    PromptFamily(trainable_regexes=".*/prompt/.*")
  with pytest.raises(ValueError, match="taken by the stack itself"):
    init(EncoderDecoder(config(), PromptFamily(stack_hooks={"layers": lambda stack: None})))
  assert set(SITES) == {"keys", "values", "mlp_hidden"}
  assert TESTS_DIR.joinpath("gin", "toy_scaled_prompt.gin").exists()
