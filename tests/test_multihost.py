"""Two `jax.distributed` processes (CPU, gloo) train a prompt through the train CLI, each reading its own input
shard, save, resume, and end where one process with the same global batch ends."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from cli_utils import MODEL_FLAGS, TASK_FLAGS, cli_command, cli_env, run_cli, write_tiny_t5x_checkpoint
from prompt_tuning.launch import local

PROMPT_FILE = "numpy_checkpoints/checkpoint_{step}/encoder.prompt.prompt.prompt.npy"
# The prompt after a few Adafactor steps at learning rate 0.3 moves by ~0.1-1 per entry; two processes only
# reorder the batch rows and the gradient all-reduce, which changes float32 sums in the last bits, and Adafactor's
# normalised steps amplify that to ~1e-5 (the 8-device check saw 1.3e-5 after three steps on AMD EPYC).
RTOL, ATOL = 1e-5, 1e-4
SAVED, LAST = 5, 9  # the pretrained checkpoint is at step 3; saves every 2 steps from there
EVAL_AT_END = 100  # an eval period longer than the run: evaluate only after the last step


def train_flags(model_dir: pathlib.Path, ckpt: pathlib.Path, steps: int, eval_period: int = 0) -> list[str]:
  # Unshuffled data and no dropout: the global batch is then the same rows however many hosts read it (each
  # host reads every other example: seqio.ShardInfo(process_index, process_count)).
  return [*MODEL_FLAGS, "--gin_file=prompts/random_uniform.gin", "--gin_file=runs/prompt_finetune.gin",
          *TASK_FLAGS, f"--gin.MODEL_DIR='{model_dir}'", f"--gin.INITIAL_CHECKPOINT_PATH='{ckpt}'",
          f"--gin.TRAIN_STEPS={steps}", "--gin.BATCH_SIZE=8", "--gin.PROMPT_LENGTH=3", "--gin.STATS_PERIOD=2",
          "--gin.SAVE_PERIOD=2", f"--gin.EVAL_PERIOD={eval_period}", "--gin.DROPOUT_RATE=0.0",
          "--gin.train/utils.DatasetConfig.shuffle=False"]


def two_processes(flags: list[str], log_dir: pathlib.Path, cwd: pathlib.Path) -> list[str]:
  codes = local.launch(cli_command("train", flags), 2, log_dir=log_dir, env=cli_env(), cwd=cwd, timeout=400)
  logs = [(log_dir / f"process_{i}.log").read_text() for i in range(2)]
  assert codes == [0, 0], "\n\n".join(log[-4000:] for log in logs)
  return logs


def prompt(model_dir: pathlib.Path, step: int) -> np.ndarray:
  return np.load(model_dir / PROMPT_FILE.format(step=step))


def inference_eval(model_dir: pathlib.Path, step: int) -> tuple[list[str], dict]:
  """The predictions (in example order) and metrics of the inference evaluation at `step`."""
  rows = [json.loads(line) for line in (model_dir / f"inference_eval/cli_test_task-{step:06d}.jsonl").open()]
  metrics = [json.loads(line) for line in (model_dir / "inference_eval/cli_test_task-metrics.jsonl").open()]
  return [r["prediction"] for r in rows], {m["step"]: m["accuracy"] for m in metrics}


@pytest.mark.slow
def test_two_processes_train_resume_and_match_one_process(tmp_path):
  ckpt = write_tiny_t5x_checkpoint(tmp_path / "pretrained")
  single, multi = tmp_path / "single", tmp_path / "multi"
  run_cli("train", train_flags(single, ckpt, LAST, EVAL_AT_END), tmp_path)  # the one-process reference
  first = two_processes(train_flags(multi, ckpt, SAVED), tmp_path / "logs_first", tmp_path)
  for log in first:
    assert "process 0 of 2" in log or "process 1 of 2" in log, log[-2000:]
  assert (multi / f"checkpoint_{SAVED}").is_dir()
  np.testing.assert_allclose(prompt(multi, SAVED), prompt(single, SAVED), rtol=RTOL, atol=ATOL)

  # The resumed run also evaluates by inference at its end: each process decodes its rows of every batch.
  resumed = two_processes(train_flags(multi, ckpt, LAST, EVAL_AT_END), tmp_path / "logs_resumed", tmp_path)
  for log in resumed:
    assert f"checkpoint_{SAVED} (data position {SAVED - 3})" in log, log[-2000:]
  assert not np.allclose(prompt(multi, LAST), prompt(multi, SAVED))  # it trained after resuming
  np.testing.assert_allclose(prompt(multi, LAST), prompt(single, LAST), rtol=RTOL, atol=ATOL)
  predictions, metrics = inference_eval(multi, LAST)
  assert len(predictions) == 8 and set(metrics) == {LAST}, (predictions, metrics)
  assert (predictions, metrics) == inference_eval(single, LAST)
