"""The train / eval / infer CLIs end to end, as a user runs them (gin files + --gin flags, subprocesses)."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from prompt_tuning.runtime import summaries
from cli_utils import MODEL_FLAGS, TASK_FLAGS, kill_cli_when, run_cli, write_tiny_t5x_checkpoint

PROMPT_FILE = "numpy_checkpoints/checkpoint_{step}/encoder.prompt.prompt.prompt"


@pytest.fixture(scope="module")
def frozen_checkpoint(tmp_path_factory) -> pathlib.Path:
  return write_tiny_t5x_checkpoint(tmp_path_factory.mktemp("pretrained"))


def train_flags(model_dir: pathlib.Path, ckpt: pathlib.Path, steps: int, *extra: str) -> list[str]:
  return [*MODEL_FLAGS, "--gin_file=prompts/random_uniform.gin", "--gin_file=runs/prompt_finetune.gin",
          *TASK_FLAGS, f"--gin.MODEL_DIR='{model_dir}'", f"--gin.INITIAL_CHECKPOINT_PATH='{ckpt}'",
          f"--gin.TRAIN_STEPS={steps}", "--gin.BATCH_SIZE=4", "--gin.PROMPT_LENGTH=3", "--gin.STATS_PERIOD=2",
          "--gin.SAVE_PERIOD=2", "--gin.EVAL_PERIOD=100", "--gin.DROPOUT_RATE=0.0", *extra]


def test_prompt_tuning_train_eval_infer(tmp_path, frozen_checkpoint):
  model_dir = tmp_path / "run"
  proc = run_cli("train", train_flags(model_dir, frozen_checkpoint, 7, "--gin.EVAL_PERIOD=4"), tmp_path)
  # TRAIN_STEPS is absolute: the checkpoint is at step 3, so 4 steps run.
  assert "step 7/7" in proc.stderr and "steps/s" in proc.stderr and "ETA" in proc.stderr
  assert (model_dir / "config.gin").read_text().count("MODEL_DIR") >= 1
  assert (model_dir / "checkpoint_7").is_dir() and not (model_dir / "checkpoint_5").exists()  # keep=1
  prompt = np.load(model_dir / PROMPT_FILE.format(step=7))
  assert prompt.shape == (3, 4) and prompt.dtype == np.float32
  np.testing.assert_array_equal(np.load(model_dir / (PROMPT_FILE.format(step=7) + ".npy")), prompt)
  assert not np.array_equal(prompt, np.load(model_dir / PROMPT_FILE.format(step=3)))  # it trained
  scalars = summaries.read_scalars(model_dir / "train")  # T5X's train/ scalars, every STATS_PERIOD=2 steps
  assert [step for step, _ in scalars["loss"]] == [5, 7]
  assert [lr for _, lr in scalars["learning_rate"]] == pytest.approx([0.3, 0.3])
  for (_, rate), (_, seqs), (_, targets) in zip(scalars["timing/steps_per_second"], scalars["timing/seqs_per_second"],
                                                scalars["timing/target_tokens_per_second"]):
    assert seqs == pytest.approx(4 * rate) and targets == pytest.approx(4 * 4 * rate)  # batch 4, targets 4
  info = (model_dir / "model-info.txt").read_text().splitlines()  # T5X's per-variable table
  prompt_line = next(l for l in info if "encoder/prompt/prompt/prompt" in l)
  assert "size 12 " in prompt_line and "(3, 4)" in prompt_line and prompt_line.endswith("trainable"), prompt_line
  assert any(l.endswith("frozen") and "token_embedder/embedding" in l for l in info)
  assert info[-1].startswith("Total number of parameters:") and "(12 trainable," in info[-1], info[-1]
  config = (model_dir / "config.gin").read_text()
  assert "optim.adafactor.decay_rate = 0.8" in config, config  # the operative config includes the optimizer
  assert list((model_dir / "training_eval" / "cli_test_task").glob("events.out.tfevents*"))
  metrics = [json.loads(l) for l in (model_dir / "inference_eval" / "cli_test_task-metrics.jsonl").open()]
  assert [m["step"] for m in metrics] == [7] and "accuracy" in metrics[0]
  assert [step for step, _ in scalars["timing/evaluate_seconds"]] == [7]  # T5X's timing of the evaluation pass
  assert scalars["timing/evaluate_seconds"][0][1] > 0

  prompt_file = model_dir / PROMPT_FILE.format(step=7)
  common = [*MODEL_FLAGS, f"--gin.CHECKPOINT_PATH='{frozen_checkpoint}'", f"--gin.PROMPT_FILE='{prompt_file}'",
            "--gin.PROMPT_LENGTH=3", *TASK_FLAGS[:2], "--gin.utils.DatasetConfig.split='validation'",
            "--gin.BATCH_SIZE=4"]
  run_cli("eval", [*common, "--gin_file=runs/prompt_eval.gin", f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'eval'}'"],
          tmp_path)
  eval_metrics = json.loads((tmp_path / "eval" / "cli_test_task-metrics.jsonl").read_text().splitlines()[-1])
  assert eval_metrics["step"] == 3 and 0.0 <= eval_metrics["accuracy"] <= 100.0
  run_cli("infer", [*common, "--gin_file=runs/prompt_infer.gin", f"--gin.INFER_OUTPUT_DIR='{tmp_path / 'infer'}'",
                    TASK_FLAGS[2]], tmp_path)
  out = tmp_path / "infer" / "cli_test_task-predict.jsonl-00000-of-00001"
  rows = [json.loads(l) for l in out.open()]
  assert len(rows) == 8 and {"inputs", "prediction", "targets"} <= set(rows[0]) and rows[0]["inputs"] == "is good 0"
  assert (tmp_path / "infer" / (out.name + ".COMPLETED")).exists()
  # T5X's --shard_id with infer.num_shards: the second half of the rows, in their own file.
  run_cli("infer", [*common, "--gin_file=runs/prompt_infer.gin", f"--gin.INFER_OUTPUT_DIR='{tmp_path / 'infer'}'",
                    TASK_FLAGS[2], "--gin.infer_script.infer.num_shards=2", "--shard_id=1", "--overwrite"], tmp_path)
  half = [json.loads(l) for l in (tmp_path / "infer" / "cli_test_task-predict.jsonl-00001-of-00002").open()]
  assert [r["inputs"] for r in half] == [r["inputs"] for r in rows][1::2]
  # mode='predict_with_aux': the same predictions plus the decoder's scores, under "aux" (T5X).
  run_cli("infer", [*common, "--gin_file=runs/prompt_infer.gin", f"--gin.INFER_OUTPUT_DIR='{tmp_path / 'infer'}'",
                    TASK_FLAGS[2], "--gin.infer_script.infer.mode='predict_with_aux'", "--overwrite"], tmp_path)
  aux_rows = [json.loads(l) for l in
              (tmp_path / "infer" / "cli_test_task-predict_with_aux.jsonl-00000-of-00001").open()]
  assert [r["prediction"] for r in aux_rows] == [r["prediction"] for r in rows]
  assert all(isinstance(r["aux"]["scores"], float) and r["aux"]["scores"] <= 0.0 for r in aux_rows), aux_rows[:2]

  # T5X's habit: evaluate the run's own checkpoint. It holds only the prompt; frozen_weights.json in MODEL_DIR
  # names the checkpoint the frozen weights came from, so the result equals the training run's own evaluation.
  assert json.loads((model_dir / "frozen_weights.json").read_text())["path"] == str(frozen_checkpoint)
  eval_run = [*MODEL_FLAGS, "--gin_file=runs/eval.gin", f"--gin.CHECKPOINT_PATH='{model_dir / 'checkpoint_7'}'",
              "--gin.PROMPT_LENGTH=3", *TASK_FLAGS[:2], "--gin.utils.DatasetConfig.split='validation'",
              "--gin.BATCH_SIZE=4", f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'eval_run'}'"]
  run_cli("eval", eval_run, tmp_path)
  run_metrics = json.loads((tmp_path / "eval_run" / "cli_test_task-metrics.jsonl").read_text().splitlines()[-1])
  assert run_metrics["step"] == 7 and run_metrics["accuracy"] == metrics[0]["accuracy"], (run_metrics, metrics)
  predictions = lambda path: [json.loads(l)["prediction"] for l in path.open()]
  during_training = predictions(model_dir / "inference_eval" / "cli_test_task-000007.jsonl")
  assert predictions(tmp_path / "eval_run" / "cli_test_task-000007.jsonl") == during_training
  assert len(set(during_training)) > 1  # distinct outputs: equal lists are not a coincidence
  # Without the record the frozen weights are unknown: a clear error, not random weights.
  (model_dir / "frozen_weights.json").rename(tmp_path / "frozen_weights.json")
  proc = run_cli("eval", eval_run, tmp_path, check=False)
  assert proc.returncode != 0 and "holds only the trained parameters" in proc.stderr, proc.stderr[-3000:]


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run_bit_for_bit(tmp_path, frozen_checkpoint):
  steps, last = 16, 19  # the frozen checkpoint is at step 3; 8 saves leave time to kill the run mid-way
  straight = tmp_path / "straight"
  run_cli("train", train_flags(straight, frozen_checkpoint, last, "--gin.EVAL_PERIOD=0"), tmp_path)
  expected = np.load(straight / PROMPT_FILE.format(step=last))

  killed = tmp_path / "killed"
  flags = train_flags(killed, frozen_checkpoint, last, "--gin.EVAL_PERIOD=0")
  kill_cli_when("train", flags, tmp_path, ready=(killed / PROMPT_FILE.format(step=5)).exists)
  saved = sorted(int(p.name.split("_")[1]) for p in (killed / "numpy_checkpoints").glob("checkpoint_*")
                 if "." not in p.name)
  assert saved and saved[-1] < last, f"the run was not interrupted mid-way (saved steps {saved}, {steps} steps)"
  resumed = run_cli("train", flags, tmp_path)
  assert "Resuming from" in resumed.stderr
  np.testing.assert_array_equal(np.load(killed / PROMPT_FILE.format(step=last)), expected)


def test_relative_steps_count_from_the_initial_checkpoint_whatever_train_steps_says(tmp_path, frozen_checkpoint):
  """TRAIN_STEPS_RELATIVE=2 from the frozen checkpoint's step 3: the run ends at step 5; TRAIN_STEPS is not read
  (scripts/compare_families.py binds it to 0)."""
  run = tmp_path / "run"
  run_cli("train", train_flags(run, frozen_checkpoint, 0, "--gin.TRAIN_STEPS_RELATIVE=2", "--gin.EVAL_PERIOD=0"),
          tmp_path)
  assert (run / PROMPT_FILE.format(step=5)).exists() and not (run / PROMPT_FILE.format(step=6)).exists()


@pytest.mark.parametrize("extra,message", [
    (["--gin.MODEL_DIR=%gin.REQUIRED"], "MODEL_DIR"),
    (["--gin.MIXTURE_OR_TASK_NAME='cli_test_tsak'"], "cli_test_task"),
    (["--gin.INITIAL_CHECKPOINT_PATH='/nonexistent/checkpoint_1'"], "/nonexistent/checkpoint_1"),
    (["--gin.utils.SaveCheckpointConfig.dtype='bfloat16'"], "SaveCheckpointConfig.dtype='bfloat16'"),
])
def test_config_errors_are_one_clear_line(tmp_path, frozen_checkpoint, extra, message):
  proc = run_cli("train", train_flags(tmp_path / "run", frozen_checkpoint, 5, *extra), tmp_path, check=False)
  assert proc.returncode != 0
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error:") and message in last, proc.stderr[-3000:]


def test_prompt_file_of_wrong_shape_is_named(tmp_path, frozen_checkpoint):
  bad = tmp_path / "bad.npy"
  np.save(bad, np.zeros((5, 7), np.float32))
  flags = [*MODEL_FLAGS, "--gin_file=runs/prompt_eval.gin", f"--gin.CHECKPOINT_PATH='{frozen_checkpoint}'",
           f"--gin.PROMPT_FILE='{bad}'", "--gin.PROMPT_LENGTH=3", *TASK_FLAGS[:2],
           f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'eval'}'", "--gin.utils.DatasetConfig.split='validation'"]
  proc = run_cli("eval", flags, tmp_path, check=False)
  assert proc.returncode != 0 and "(5, 7)" in proc.stderr and "PROMPT_LENGTH" in proc.stderr


def test_eval_mode_all_evaluates_every_checkpoint_of_a_run(tmp_path, frozen_checkpoint):
  """T5X's `RestoreCheckpointConfig.mode='all'` on MODEL_DIR: one metrics line per kept checkpoint."""
  model_dir = tmp_path / "run"
  run_cli("train", train_flags(model_dir, frozen_checkpoint, 7, "--gin.EVAL_PERIOD=0", "--gin.KEEP_CHECKPOINTS=None"),
          tmp_path)
  flags = [*MODEL_FLAGS, "--gin_file=runs/eval.gin", f"--gin.CHECKPOINT_PATH='{model_dir}'", "--gin.PROMPT_LENGTH=3",
           *TASK_FLAGS[:2], "--gin.utils.DatasetConfig.split='validation'", "--gin.BATCH_SIZE=4",
           f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'eval'}'"]
  proc = run_cli("eval", [*flags, "--gin.utils.RestoreCheckpointConfig.mode='all'"], tmp_path)
  lines = [json.loads(l) for l in (tmp_path / "eval" / "cli_test_task-metrics.jsonl").open()]
  assert [l["step"] for l in lines] == [3, 5, 7], lines  # the run also saves its starting point (step 3)
  # The frozen weights are read once, and reusing them gives what evaluating checkpoint_5 alone gives.
  assert proc.stderr.count("Reusing the frozen weights from") == 2, proc.stderr[-3000:]
  alone = [f for f in flags if not f.startswith(("--gin.CHECKPOINT_PATH", "--gin.EVAL_OUTPUT_DIR"))] + [
      f"--gin.CHECKPOINT_PATH='{model_dir / 'checkpoint_5'}'", f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'eval5'}'"]
  run_cli("eval", alone, tmp_path)
  single = [json.loads(l) for l in (tmp_path / "eval5" / "cli_test_task-metrics.jsonl").open()]
  assert single == [lines[1]], (single, lines)
  proc = run_cli("eval", [*flags, "--gin.utils.RestoreCheckpointConfig.mode='every'"], tmp_path, check=False)
  assert proc.stderr.strip().splitlines()[-1].startswith("error: RestoreCheckpointConfig.mode='every' is not one of")
