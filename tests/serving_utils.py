"""Shared by the serving tests: a second byte-vocabulary task and its mixture with `cli_test_task` (this module
is the CLI runs' MIXTURE_OR_TASK_MODULE), the tiny model in-process, and the CLI flags of an eval/infer run."""
from __future__ import annotations

import atexit
import functools
import json
import pathlib
import shutil
import tempfile
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import seqio
import tensorflow as tf

import cli_tasks
from cli_utils import BYTE_VOCAB_ROWS, MODEL_FLAGS, write_tiny_t5x_checkpoint
from prompt_tuning.family import TASK_IDS, PromptFamily
from prompt_tuning.runtime.checkpoints.restore import load_params
from prompt_tuning.runtime.evaluation import batched_indexed

PROMPT_LENGTH = 3
WIDTH = 4  # the tiny model's width
TASK_FEATURE_LENGTHS = {"inputs": 12, "targets": 4}


def _turns(split: str, shuffle_files: bool = False, seed: int | None = None) -> tf.data.Dataset:
  del shuffle_files, seed
  n = 16 if split == "train" else 6
  rows = [(f"level {w} {i}", w[:2]) for i in range(n) for w in [("high", "low")[i % 2]]]
  return tf.data.Dataset.from_tensor_slices({"inputs": [r[0] for r in rows], "targets": [r[1] for r in rows]})


if "serving_task_b" not in seqio.TaskRegistry.names():
  seqio.TaskRegistry.add(
      "serving_task_b", source=seqio.FunctionDataSource(_turns, splits=["train", "validation"]),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features={"inputs": seqio.Feature(cli_tasks.VOCAB), "targets": seqio.Feature(cli_tasks.VOCAB)},
      metric_fns=[cli_tasks._accuracy])
  seqio.MixtureRegistry.add("serving_test_mixture", ["cli_test_task", "serving_task_b"], default_rate=1.0)


def random_prompts(count: int, seed: int = 0, scale: float = 3.0) -> list[np.ndarray]:
  rng = np.random.RandomState(seed)
  return [rng.uniform(-scale, scale, (PROMPT_LENGTH, WIDTH)).astype(np.float32) for _ in range(count)]


def tiny_model(prompt_module: Callable[[], Any], **family: Any):
  """The CLI tests' tiny byte-vocabulary model with `prompt_module()` as its prompt (`family`: more of the
  `PromptFamily`'s fields)."""
  from prompt_tuning import prompts
  from prompt_tuning.models import EncoderDecoder, get_config
  from prompt_tuning.runtime.models import EncoderDecoderModel
  config = get_config("tiny", vocab_size=BYTE_VOCAB_ROWS, dtype=jnp.float32)
  module = EncoderDecoder(config, PromptFamily(lambda: prompts.PromptedInputs(prompt_module()), **family))
  return EncoderDecoderModel(module, cli_tasks.VOCAB)


def bank_model(prompts_by_task: Any, length: int = PROMPT_LENGTH, **family: Any):
  """The tiny model serving a bank of prompts, as serving/prompt_bank.gin (and ensemble.gin) build it."""
  from prompt_tuning.serving import prompt_bank
  return tiny_model(lambda: prompt_bank.PromptBank(prompts_by_task, length), batch_features=[TASK_IDS],
                    task_names=prompt_bank.task_names(prompts_by_task), **family)


def single_prompt_model(prompt: np.ndarray):
  from prompt_tuning import prompts
  return tiny_model(lambda: prompts.Prompt(length=PROMPT_LENGTH, initializer=prompts.from_array(prompt)))


@functools.lru_cache(maxsize=1)
def pretrained_checkpoint() -> pathlib.Path:
  """The tiny frozen T5X checkpoint, written once per test process (slow on a busy machine), removed at exit."""
  root = pathlib.Path(tempfile.mkdtemp(prefix="serving_tests_"))
  atexit.register(shutil.rmtree, root, ignore_errors=True)
  return write_tiny_t5x_checkpoint(root)


@functools.lru_cache(maxsize=1)
def reference() -> tuple[Callable[..., Any], Callable[..., Any]]:
  """Jitted `(score_batch, predict_batch)` of the model with one plain prompt, compiled once per process; pass
  the prompt in the params (`with_prompt(frozen_params(...), {"prompt": p})`)."""
  model = single_prompt_model(np.zeros((PROMPT_LENGTH, WIDTH), np.float32))
  return jax.jit(model.score_batch), jax.jit(model.predict_batch)


def cli_flags(checkpoint: pathlib.Path, task: str, *extra: str) -> list[str]:
  """Flags of an `eval`/`infer` CLI run of the tiny model on `task`'s validation split, batches of 4."""
  return [*MODEL_FLAGS, f"--gin.CHECKPOINT_PATH='{checkpoint}'", f"--gin.PROMPT_LENGTH={PROMPT_LENGTH}",
          f"--gin.MIXTURE_OR_TASK_NAME='{task}'", "--gin.MIXTURE_OR_TASK_MODULE='serving_utils'",
          f"--gin.TASK_FEATURE_LENGTHS={TASK_FEATURE_LENGTHS}", "--gin.utils.DatasetConfig.split='validation'",
          "--gin.BATCH_SIZE=4", *extra]


def read_rows(out_dir: pathlib.Path, task: str, mode: str = "predict") -> list[dict]:
  return [json.loads(line) for line in (out_dir / f"{task}-{mode}.jsonl-00000-of-00001").open()]


def frozen_params(checkpoint: pathlib.Path) -> dict:
  return jax.tree_util.tree_map(jnp.asarray, load_params(str(checkpoint))[0])


def with_prompt(params: dict, prompt_params: dict) -> dict:
  """`params` whose encoder prompt module (`encoder/prompt/prompt`) holds `prompt_params`."""
  return {**params, "encoder": {**params["encoder"], "prompt": {"prompt": prompt_params}}}


def task_batches(task: str, batch_size: int = 4) -> list[tuple[np.ndarray, dict]]:
  """The validation split as the CLIs batch it: (indices, model features), the last batch padded (index -1)."""
  ds = seqio.get_mixture_or_task(task).get_dataset(TASK_FEATURE_LENGTHS, split="validation", shuffle=False)
  features = seqio.EncDecFeatureConverter(pack=False)(ds, TASK_FEATURE_LENGTHS).enumerate()
  return list(batched_indexed(features, batch_size))


def per_example(fn: Callable[[dict], Any], batches: list[tuple[np.ndarray, dict]]) -> list[np.ndarray]:
  """`fn(batch)` split into rows, in example order, without the padding rows."""
  return [row for idx, feats in batches for i, row in zip(idx, np.asarray(fn(feats))) if i >= 0]


def decode(tokens: np.ndarray) -> str:
  return cli_tasks.VOCAB.decode([int(t) for t in tokens])
