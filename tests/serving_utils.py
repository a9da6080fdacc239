"""Shared by the serving tests: a second byte-vocabulary task and its mixture with `cli_test_task` (also the
CLI's MIXTURE_OR_TASK_MODULE), and in-process models and inference with one plain prompt, the reference."""
from __future__ import annotations

import json
import pathlib
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
import seqio
import tensorflow as tf

import cli_tasks
from cli_utils import BYTE_VOCAB_ROWS

PROMPT_LENGTH = 3
WIDTH = 4  # the tiny model's width
TASK_FEATURE_LENGTHS = {"inputs": 12, "targets": 4}


def _turns(split: str, shuffle_files: bool = False, seed: int | None = None) -> tf.data.Dataset:
  del shuffle_files, seed
  n = 16 if split == "train" else 6
  rows = [(f"turn {w} {i}", {"up": "down", "down": "up"}[w]) for i in range(n) for w in [("up", "down")[i % 2]]]
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


def tiny_model(prompt_module: Callable[[], Any]):
  """The CLI tests' tiny byte-vocabulary model with `prompt_module()` as its prompt."""
  from prompt_tuning import prompts
  from prompt_tuning.models import EncoderDecoder, get_config
  from prompt_tuning.runtime.models import EncoderDecoderModel
  config = get_config("tiny", vocab_size=BYTE_VOCAB_ROWS, dtype=jnp.float32)
  module = EncoderDecoder(config, lambda: prompts.PromptedInputs(prompt_module()))
  return EncoderDecoderModel(module, cli_tasks.VOCAB)


def single_prompt_model(prompt: np.ndarray):
  from prompt_tuning import prompts
  return tiny_model(lambda: prompts.Prompt(length=PROMPT_LENGTH, initializer=prompts.from_array(prompt)))


def infer_in_process(model, task: str, checkpoint: pathlib.Path, out_dir: pathlib.Path, mode: str) -> list[dict]:
  """`prompt_tuning.infer.infer` without gin (the frozen model from `checkpoint`); the JSONL rows of `task`."""
  from prompt_tuning import infer
  from prompt_tuning.runtime import partitioning
  from prompt_tuning.runtime.configs import DatasetConfig, RestoreCheckpointConfig
  infer.infer(model=model, dataset_cfg=DatasetConfig(task, TASK_FEATURE_LENGTHS, "validation", batch_size=4),
              partitioner=partitioning.PjitPartitioner(num_partitions=1),
              restore_checkpoint_cfg=RestoreCheckpointConfig(str(checkpoint), dtype=None,
                                                             assignment_map=((r".*prompt.*", None),),
                                                             fallback_to_scratch=True),
              output_dir=str(out_dir), mode=mode)
  return read_rows(out_dir, task, mode)


def read_rows(out_dir: pathlib.Path, task: str, mode: str) -> list[dict]:
  return [json.loads(line) for line in (out_dir / f"{task}-{mode}.jsonl-00000-of-00001").open()]
