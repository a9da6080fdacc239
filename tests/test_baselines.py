"""Baselines for the curves: model tuning (all parameters) and prompt design (text prompt, no training)."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import seqio
from flax import traverse_util

import cli_tasks
import serving_utils as su
from cli_utils import TASK_FLAGS, TESTS_DIR, run_cli
from prompt_tuning.baselines import prompt_design
from prompt_tuning.runtime.checkpoints.restore import load_params

PLAIN_MODEL_FLAGS = ["--gin_file=models/t5_1_1_tiny.gin", "--gin_file=byte_vocab_tiny.gin",
                     f"--gin_search_paths={TESTS_DIR / 'gin'}"]


def _first(task: str, sequence_length=None) -> dict:
  ds = seqio.get_mixture_or_task(task).get_dataset(sequence_length, split="validation", shuffle=False)
  return next(ds.as_numpy_iterator())


def test_in_context_task_writes_instruction_examples_then_input():
  name = prompt_design.in_context_task("cli_test_task", instruction="Answer yes or no.", num_examples=2,
                                       template="Q: {inputs} A: {targets}", module="cli_tasks")
  assert name == "cli_test_task_prompt_design_2shot"
  ex, base = _first(name), _first("cli_test_task")
  text = ex["inputs_pretokenized"].decode()
  lines = text.split("\n")
  assert len(lines) == 4 and lines[0] == "Answer yes or no." and lines[-1] == "Q: is good 0 A:", text
  demos = [re.fullmatch(r"Q: is (good|bad) (\d+) A: (yes|no)", line) for line in lines[1:3]]
  assert all(m and cli_tasks.WORDS[m[1]] == m[3] for m in demos) and demos[0][2] != demos[1][2]
  assert list(ex["inputs"]) == list(cli_tasks.VOCAB.encode(text)) + [cli_tasks.VOCAB.eos_id]
  np.testing.assert_array_equal(ex["targets"], base["targets"])
  task = seqio.get_mixture_or_task(name)
  assert task.postprocessor is seqio.get_mixture_or_task("cli_test_task").postprocessor and task.metric_objs
  trimmed = _first(name, {"inputs": 10, "targets": 4})["inputs"]  # too long: the start goes, the query stays
  assert cli_tasks.VOCAB.decode(list(trimmed)) == text[-9:]
  prompt_design.in_context_task("cli_test_task", num_examples=2, template="Q: {inputs} A: {targets}",
                                module="cli_tasks")  # replaces the task: same seed, same examples
  assert _first(name)["inputs_pretokenized"].decode() == "\n".join(lines[1:])


def test_zero_shot_without_instruction_is_the_task_itself():
  name = prompt_design.in_context_task("cli_test_task", module="cli_tasks")
  np.testing.assert_array_equal(_first(name)["inputs"], _first("cli_test_task")["inputs"])


@pytest.mark.parametrize("kwargs,message", [
    (dict(template="{targets}"), "exactly once"),
    (dict(num_examples=500), "NUM_SHOTS=500"),
    (dict(num_examples=1, examples_split="test"), "no split 'test'"),
])
def test_prompt_design_errors_name_the_fix(kwargs, message):
  with pytest.raises(ValueError, match=message):
    prompt_design.in_context_task("cli_test_task", module="cli_tasks", **kwargs)


def test_eval_cli_prompt_design(tmp_path):
  out = tmp_path / "eval"
  run_cli("eval", [*PLAIN_MODEL_FLAGS, "--gin_file=runs/eval.gin", "--gin_file=baselines/prompt_design.gin",
                   f"--gin.CHECKPOINT_PATH='{su.pretrained_checkpoint()}'", "--gin.PROMPT_DESIGN_TASK='cli_test_task'",
                   "--gin.MIXTURE_OR_TASK_MODULE='cli_tasks'", "--gin.INSTRUCTION='Answer yes or no.'",
                   "--gin.NUM_SHOTS=2", "--gin.utils.DatasetConfig.split='validation'", "--gin.BATCH_SIZE=4",
                   f"--gin.EVAL_OUTPUT_DIR='{out}'"], tmp_path)
  metrics = json.loads((out / "cli_test_task_prompt_design_2shot-metrics.jsonl").read_text().splitlines()[-1])
  assert metrics["step"] == 3 and 0.0 <= metrics["accuracy"] <= 100.0


def test_train_cli_model_tuning_updates_every_weight(tmp_path):
  model_dir = tmp_path / "run"
  run_cli("train", [*PLAIN_MODEL_FLAGS, "--gin_file=runs/finetune.gin", *TASK_FLAGS, f"--gin.MODEL_DIR='{model_dir}'",
                    f"--gin.INITIAL_CHECKPOINT_PATH='{su.pretrained_checkpoint()}'", "--gin.TRAIN_STEPS=5",
                    "--gin.BATCH_SIZE=4", "--gin.EVAL_PERIOD=2", "--gin.EVAL_STEPS=1"], tmp_path)
  before = traverse_util.flatten_dict(load_params(str(su.pretrained_checkpoint()))[0], sep="/")
  after, step = load_params(str(model_dir / "checkpoint_5"))
  after = traverse_util.flatten_dict(after, sep="/")
  assert step == 5 and set(after) == set(before)  # the run's checkpoint holds every weight: all trained
  assert [k for k in before if np.array_equal(before[k], after[k])] == []
  metrics = [json.loads(l) for l in (model_dir / "inference_eval" / "cli_test_task-metrics.jsonl").open()]
  assert [m["step"] for m in metrics] == [5] and "accuracy" in metrics[0]
