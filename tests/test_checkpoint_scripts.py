"""The reference's checkpoint scripts, run as a user runs them: `extract_variable`, `diff_checkpoints`,
`subsample_vocab` and `recreate_checkpoint`."""
from __future__ import annotations

import json
import pathlib

import ml_dtypes
import numpy as np

from cli_utils import MODEL_FLAGS, TASK_FLAGS, run_cli, write_tiny_t5x_checkpoint
from prompt_tuning.runtime.checkpoints import load_t5x_params
from prompt_tuning.runtime.checkpoints.orbax_io import load_orbax_params


def test_extracts_one_variable_of_a_t5x_checkpoint(tmp_path):
  ckpt = write_tiny_t5x_checkpoint(tmp_path / "pretrained")
  want = load_t5x_params(str(ckpt))["encoder"]["layers_0"]["mlp"]["wo"]["kernel"]
  out = tmp_path / "out" / "wo.npy"
  proc = run_cli("scripts.extract_variable", [f"--checkpoint_dir={ckpt}", f"--output_path={out}",
                                              "--variable_path=target/encoder/layers_0/mlp/wo/kernel"], tmp_path)
  assert "target/encoder/layers_0/mlp/wo/kernel" in proc.stdout
  got = np.load(out)
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, want)
  # Our parameter path (no 'target/') and a bfloat16 copy.
  run_cli("scripts.extract_variable", [f"--checkpoint_dir={ckpt}", f"--output_path={out}", "--restore_dtype=bfloat16",
                                       "--variable_path=encoder/layers_0/mlp/wo/kernel"], tmp_path)
  stored = np.load(out)  # numpy has no bfloat16: the file holds 2-byte records, viewed back with ml_dtypes
  np.testing.assert_array_equal(stored.view(ml_dtypes.bfloat16), np.asarray(want).astype(ml_dtypes.bfloat16))
  bad = run_cli("scripts.extract_variable", [f"--checkpoint_dir={ckpt}", f"--output_path={out}",
                                             "--variable_path=target/encoder/nope"], tmp_path, check=False)
  assert bad.returncode != 0 and "nope" in bad.stderr.strip().splitlines()[-1], bad.stderr[-2000:]


def test_diff_checkpoints_reports_what_differs_and_exits_1(tmp_path):
  a = write_tiny_t5x_checkpoint(tmp_path / "a", step=3, seed=0)
  same = write_tiny_t5x_checkpoint(tmp_path / "same", step=5, seed=0)
  other = write_tiny_t5x_checkpoint(tmp_path / "other", step=3, seed=1)
  # Same weights at another step: equal unless the step is compared.
  proc = run_cli("scripts.diff_checkpoints", [str(a), str(same), f"--output={tmp_path / 'same.json'}"], tmp_path)
  report = json.loads((tmp_path / "same.json").read_text())
  assert not report["errors"] and set(report["parameters"].values()) == {"Matched!"}
  assert "target/token_embedder/embedding" in report["parameters"] and "differences" in proc.stdout
  step = run_cli("scripts.diff_checkpoints", [str(a), str(same), "--compare_step"], tmp_path, check=False)
  assert step.returncode == 1 and '"parameter": "state/step"' in step.stdout, step.stdout[-2000:]
  # Other weights: value mismatches, with counts and the largest error; a spot check of half the variables.
  proc = run_cli("scripts.diff_checkpoints", [str(a), str(other), "--frac=0.5", "--seed=0", "--limit_to_params",
                                              "--check=target/decoder/logits_dense/kernel",
                                              f"--output={tmp_path / 'other.json'}"], tmp_path, check=False)
  report = json.loads((tmp_path / "other.json").read_text())
  shared = len(load_t5x_params_flat(a))
  assert proc.returncode == 1 and len(report["parameters"]) in (shared // 2, shared // 2 + 1)
  logits = report["parameters"]["target/decoder/logits_dense/kernel"]
  assert logits["error_type"] == "value" and logits["mismatch"] > 0 and logits["max_error"] > 0
  bad = run_cli("scripts.diff_checkpoints", [str(a), str(other), "--frac=0"], tmp_path, check=False)
  assert bad.returncode != 0 and "--frac=0.0 must be in (0, 1]" in bad.stderr


def load_t5x_params_flat(path) -> dict:
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  return traverse_util.flatten_dict(load_t5x_params(str(path)), sep="/")


def test_subsample_vocab_writes_a_prompt_of_distinct_vocabulary_rows(tmp_path):
  ckpt = write_tiny_t5x_checkpoint(tmp_path / "pretrained")
  table = np.asarray(load_t5x_params(str(ckpt))["token_embedder"]["embedding"])
  out = tmp_path / "init.npy"
  run_cli("scripts.subsample_vocab", [f"--checkpoint_dir={ckpt}", "--prompt_length=6", "--population_size=10",
                                      "--seed=3", f"--output_path={out}"], tmp_path)
  prompt = np.load(out)
  assert prompt.shape == (6, table.shape[1]) and prompt.dtype == np.float32
  rows = [int(np.flatnonzero((table[:10] == row).all(axis=1))[0]) for row in prompt]  # each is one of the first 10
  assert len(set(rows)) == 6, rows  # without replacement
  again = tmp_path / "again.npy"
  run_cli("scripts.subsample_vocab", [f"--checkpoint_dir={ckpt}", "--prompt_length=6", "--population_size=10",
                                      "--seed=3", f"--output_path={again}"], tmp_path)
  np.testing.assert_array_equal(np.load(again), prompt)  # the seed fixes the draw


def test_recreate_checkpoint_rebuilds_an_earlier_step_that_evaluates_like_its_export(tmp_path):
  frozen = write_tiny_t5x_checkpoint(tmp_path / "pretrained")
  run = tmp_path / "run"
  run_cli("train", [*MODEL_FLAGS, "--gin_file=prompts/random_uniform.gin", "--gin_file=runs/prompt_finetune.gin",
                    *TASK_FLAGS, f"--gin.MODEL_DIR='{run}'", f"--gin.INITIAL_CHECKPOINT_PATH='{frozen}'",
                    "--gin.TRAIN_STEPS=7", "--gin.BATCH_SIZE=4", "--gin.PROMPT_LENGTH=3", "--gin.SAVE_PERIOD=2",
                    "--gin.EVAL_PERIOD=0", "--gin.DROPOUT_RATE=0.0"], tmp_path)
  assert sorted(p.name for p in run.glob("checkpoint_*")) == ["checkpoint_7"]  # keep=1: step 5 is only an export
  export = np.load(run / "numpy_checkpoints/checkpoint_5/encoder.prompt.prompt.prompt.npy")
  assert not np.array_equal(export, np.load(run / "numpy_checkpoints/checkpoint_7/encoder.prompt.prompt.prompt.npy"))

  out = tmp_path / "best"
  proc = run_cli("scripts.recreate_checkpoint", [f"--model_dir={run}", "--step=5", f"--output_dir={out}"], tmp_path)
  assert f"wrote {out / 'checkpoint_5'}" in proc.stdout
  params, step = load_orbax_params(out / "checkpoint_5")
  assert step == 5
  np.testing.assert_array_equal(params["encoder"]["prompt"]["prompt"]["prompt"], export)

  # Evaluating the rebuilt checkpoint (T5X's habit) equals evaluating the frozen model with the step-5 export.
  common = [*MODEL_FLAGS, "--gin.PROMPT_LENGTH=3", *TASK_FLAGS[:2], "--gin.utils.DatasetConfig.split='validation'",
            "--gin.BATCH_SIZE=4"]
  run_cli("eval", [*common, "--gin_file=runs/eval.gin", f"--gin.CHECKPOINT_PATH='{out / 'checkpoint_5'}'",
                   f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'eval_ckpt'}'"], tmp_path)
  run_cli("eval", [*common, "--gin_file=runs/prompt_eval.gin", f"--gin.CHECKPOINT_PATH='{frozen}'",
                   f"--gin.PROMPT_FILE='{run / 'numpy_checkpoints/checkpoint_5/encoder.prompt.prompt.prompt'}'",
                   f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'eval_npy'}'"], tmp_path)
  predictions = lambda d: [json.loads(l)["prediction"] for p in sorted(d.glob("cli_test_task-*.jsonl"))
                           if "metrics" not in p.name for l in p.open()]
  from_checkpoint = predictions(tmp_path / "eval_ckpt")
  assert len(set(from_checkpoint)) > 1 and from_checkpoint == predictions(tmp_path / "eval_npy")

  # A step without an export, and an existing checkpoint, are clear errors; nothing is overwritten.
  bad = run_cli("scripts.recreate_checkpoint", [f"--model_dir={run}", "--step=4"], tmp_path, check=False)
  assert bad.returncode != 0 and "No numpy export for step 4" in bad.stderr and "checkpoint_5" in bad.stderr
  again = run_cli("scripts.recreate_checkpoint", [f"--model_dir={run}", "--step=5", f"--output_dir={out}"], tmp_path,
                  check=False)
  assert again.returncode != 0 and "exists already" in again.stderr
  # Into MODEL_DIR itself: the rebuilt step sits next to the latest, which stays the latest.
  run_cli("scripts.recreate_checkpoint", [f"--model_dir={run}", "--step=3"], tmp_path)
  assert sorted(p.name for p in run.glob("checkpoint_*")) == ["checkpoint_3", "checkpoint_7"]
  assert load_orbax_params(run / "checkpoint_7")[1] == 7


def test_find_module_prints_where_a_package_lives(tmp_path):
  import prompt_tuning  # pylint: disable=g-import-not-at-top
  proc = run_cli("scripts.find_module", ["prompt_tuning"], tmp_path)
  folder = proc.stdout.strip()
  assert folder == str(pathlib.Path(prompt_tuning.__file__).resolve().parent)
  assert (pathlib.Path(folder) / "gin_configs" / "runs" / "prompt_finetune.gin").exists() or \
      (pathlib.Path(folder).parent / "gin_configs" / "runs" / "prompt_finetune.gin").exists()
  bad = run_cli("scripts.find_module", ["no_such_module_here"], tmp_path, check=False)
  assert bad.returncode != 0 and "no_such_module_here" in bad.stderr
