"""Attention visibility between prompt and input positions (`prompt_tuning.masks`, gin `PROMPT_ATTENTION`)."""
from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cli_utils import MODEL_FLAGS, TASK_FLAGS, TESTS_DIR, run_cli, write_tiny_t5x_checkpoint
from prompt_tuning import masks, prompts
from prompt_tuning.families import count, multitask

# Two examples, prefix prompt of 2, inputs of 3 with one pad in the second example.
TOKENS = jnp.array([[5, 6, 7], [8, 9, 0]])
P = 2


def _prefix_mask(types):
  combine = lambda t: jnp.concatenate([jnp.ones((t.shape[0], P), t.dtype), t], axis=1)
  is_prompt = masks.prompt_positions(combine, TOKENS)
  return np.asarray(masks.prompt_attention_mask(combine(TOKENS), is_prompt, masks.normalise_attention(types)))


def test_masks_follow_each_flag_query_to_key():
  # Rows are queries, columns keys: prompt 0, prompt 1, input 0, input 1, input 2 (a pad in example 1).
  only_inputs = _prefix_mask([])  # always on: input->input and input->prompt; a prompt sees itself only
  np.testing.assert_array_equal(only_inputs[1, 0], [[1, 0, 0, 0, 0],
                                                    [0, 1, 0, 0, 0],
                                                    [1, 1, 1, 1, 0],
                                                    [1, 1, 1, 1, 0],
                                                    [0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(only_inputs[0, 0, 4], [1, 1, 1, 1, 1])  # no pad in example 0
  with_inputs = _prefix_mask([masks.PROMPT_INPUT, masks.PROMPT_PROMPT_CAUSAL])
  np.testing.assert_array_equal(with_inputs[1, 0, :2], [[1, 0, 1, 1, 0],
                                                        [1, 1, 1, 1, 0]])
  np.testing.assert_array_equal(with_inputs[1, 0, 2:], only_inputs[1, 0, 2:])
  full = _prefix_mask(list(masks.ATTENTION_TYPES[:4]))  # every flag but causal: the paper's full visibility
  valid = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]], bool)
  np.testing.assert_array_equal(full[:, 0], valid[:, :, None] & valid[:, None, :])


def test_prompt_positions_for_every_combination():
  tokens = jnp.array([[5, 6, 1, 0], [7, 1, 0, 0]])  # EOS = 1, then padding
  expect = {"prefix": [[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]],
            "prefix_after_bos": [[0, 1, 1, 0, 0, 0], [0, 1, 1, 0, 0, 0]],
            "suffix_before_eos": [[0, 0, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0]]}  # before each example's EOS
  for combination, positions in expect.items():
    inputs = prompts.PromptedInputs(prompts.Prompt(2), combination)
    np.testing.assert_array_equal(masks.prompt_positions(inputs.combine_tokens, tokens), np.array(positions, bool))
  sentinel = multitask.MultiTaskInputs(prompts.Prompt(2))  # drops the task token
  np.testing.assert_array_equal(masks.prompt_positions(sentinel.combine_tokens, tokens),
                                np.array([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0]], bool))


def test_bad_flags_are_named_with_the_fix():
  with pytest.raises(ValueError, match=r"Unknown prompt attention flag\(s\) \['prompt->everything'\].*query->key"):
    masks.normalise_attention(["input->input", "prompt->everything"])
  with pytest.raises(ValueError, match=r"is a string; give a list"):
    masks.normalise_attention("prompt->input")
  assert masks.normalise_attention(["prompt->prompt", "prompt->prompt;causal"]) == {
      "input->input", "input->prompt", "prompt->prompt;causal"}


def _gin_model(*bindings):
  return count.configured_model(["models/t5_1_1_tiny_prompt.gin", "byte_vocab_tiny.gin"],
                                [f"PROMPT_LENGTH={P}", "ACTIVATION_DTYPE='float32'", *bindings],
                                [str(TESTS_DIR / "gin")])


def _encode(model, params, tokens):
  return model.module.apply({"params": params}, tokens, method=model.module.encode)


def test_gin_visibility_changes_what_the_encoder_reads():
  """Without prompt->input the prompt positions' encoder outputs ignore the input; with the causal flag a
  prompt position ignores later prompt rows. The default (None) keeps the paper's full visibility."""
  other = TOKENS.at[0, 0].set(42)
  results = {}
  for name, flags in [("default", None), ("blind", "['input->input', 'input->prompt']"),
                      ("causal", "['prompt->prompt;causal']")]:
    bindings = [] if flags is None else [f"PROMPT_ATTENTION={flags}"]
    with _gin_model(*bindings) as (model, _):
      shapes = {"encoder_input_tokens": TOKENS.shape, "decoder_input_tokens": (2, 2)}
      params = nn.meta.unbox(model.get_initial_variables(jax.random.PRNGKey(0), shapes)["params"])
      a, b = _encode(model, params, TOKENS), _encode(model, params, other)
      moved = jax.tree_util.tree_map(lambda x: x, params)
      moved["encoder"]["prompt"]["prompt"]["prompt"] = params["encoder"]["prompt"]["prompt"]["prompt"].at[-1].add(1.0)
      c = _encode(model, moved, TOKENS)
    results[name] = (np.abs(a[0, :P] - b[0, :P]).max(), np.abs(a[:, :P - 1] - c[:, :P - 1]).max(),
                     np.abs(a[:, P:] - c[:, P:]).max())
  assert results["default"][0] > 1e-4 and results["default"][1] > 1e-4
  assert results["blind"][0] == 0.0 and results["blind"][1] == 0.0  # each prompt position sees itself only
  assert results["causal"][0] == 0.0 and results["causal"][1] == 0.0
  assert all(r[2] > 1e-4 for r in results.values())  # the inputs always read the whole prompt


def test_gin_visibility_without_an_input_prompt_is_an_error():
  with pytest.raises(ValueError, match=r"PROMPT_ATTENTION=.*no input prompt.*PROMPT_FACTORY is None"):
    with count.configured_model(["models/t5_1_1_tiny.gin", "byte_vocab_tiny.gin"],
                                ["PROMPT_ATTENTION=['prompt->input']"], [str(TESTS_DIR / "gin")]) as (model, _):
      del model


def test_train_cli_with_prompt_attention(tmp_path):
  """A short run with a causal, input-blind prompt lowers the loss; config.gin records the flags; a bad flag
  stops the run before any step, naming it."""
  ckpt = write_tiny_t5x_checkpoint(tmp_path / "pretrained")
  flags = [*MODEL_FLAGS, "--gin_file=runs/prompt_finetune.gin", *TASK_FLAGS, f"--gin.INITIAL_CHECKPOINT_PATH='{ckpt}'",
           f"--gin.MODEL_DIR='{tmp_path / 'run'}'", "--gin.TRAIN_STEPS=19", "--gin.BATCH_SIZE=8",
           "--gin.PROMPT_LENGTH=3", "--gin.STATS_PERIOD=8", "--gin.SAVE_PERIOD=16", "--gin.EVAL_PERIOD=0",
           "--gin.DROPOUT_RATE=0.0"]
  proc = run_cli("train", [*flags, "--gin.PROMPT_ATTENTION=['input->input', 'input->prompt', "
                                   "'prompt->prompt;causal']"], tmp_path)
  losses = [float(x) for x in re.findall(r"step \d+/\d+ +loss ([\d.]+)", proc.stderr)]
  assert len(losses) == 2 and losses[1] < losses[0], proc.stderr[-3000:]
  assert "prompt->prompt;causal" in (tmp_path / "run" / "config.gin").read_text()
  bad = run_cli("train", [*flags, f"--gin.MODEL_DIR='{tmp_path / 'bad'}'", "--gin.PROMPT_ATTENTION=['prompt->all']"],
                tmp_path, check=False)
  assert bad.returncode != 0 and "Unknown prompt attention flag(s) ['prompt->all']" in bad.stderr, bad.stderr[-2000:]


def test_family_costs_of_a_model_with_prompt_attention():
  """The cost model compares with the bare frozen model, which has no prompt to restrict."""
  cost = count.costs_from_gin(["models/t5_1_1_tiny_prompt.gin", "byte_vocab_tiny.gin"],
                              [f"PROMPT_LENGTH={P}", "PROMPT_ATTENTION=['prompt->input']"], [str(TESTS_DIR / "gin")])
  assert cost.trainable_params == P * 4 and cost.extra_flops > 0
