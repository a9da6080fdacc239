"""P-tuning v1 (`families/ptuning.py`, `families/ptuning.gin`): the prompt is an LSTM's or MLP's output over free
embeddings; trained through the CLI, exported as a plain [P, d] prompt that the plain prompt model serves with
the same predictions."""
from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from cli_utils import MODEL_FLAGS, TASK_FLAGS, run_cli, write_tiny_t5x_checkpoint
from prompt_tuning.families import ptuning


@pytest.mark.parametrize("encoder,reaches", [("lstm", "both ways"), ("mlp", "itself only")])
def test_each_prompt_row_reads_every_embedding_through_the_bidirectional_lstm_and_only_its_own_through_the_mlp(
    encoder, reaches):
  module = ptuning.PTuningPrompt(length=5, encoder=encoder, hidden_dim=6)
  shapes = nn.meta.unbox(jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), 8, method=module.final)))
  rng = np.random.default_rng(0)  # random values, not the initialisers (compiling those costs more than the test)
  params = jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(0.0, 0.5, s.shape), s.dtype), shapes)
  apply = jax.jit(lambda p: module.apply(p, 8, method=module.final))
  prompt = apply(params)
  assert prompt.shape == (5, 8) and prompt.dtype == jnp.float32
  moved_row = params["params"]["embedding"].at[2].add(1.0)  # move the middle embedding
  changed = {"params": {**params["params"], "embedding": moved_row}}
  moved = np.abs(np.asarray(apply(changed) - prompt)).max(axis=1) > 1e-6
  assert moved.tolist() == ([True] * 5 if reaches == "both ways" else [False, False, True, False, False])


@pytest.fixture(scope="module")
def frozen_checkpoint(tmp_path_factory) -> pathlib.Path:
  return write_tiny_t5x_checkpoint(tmp_path_factory.mktemp("pretrained"))


def _predictions(path: pathlib.Path) -> tuple[list[str], np.ndarray]:
  rows = [json.loads(line) for line in path.open()]
  return [r["prediction"] for r in rows], np.array([r["aux"]["scores"] for r in rows])


def test_ptuning_trains_and_its_exported_prompt_gives_the_plain_prompt_model_the_same_predictions(
    tmp_path, frozen_checkpoint):
  model_dir, step = tmp_path / "run", 3 + 6
  family = [*MODEL_FLAGS, "--gin_file=families/ptuning.gin"]
  proc = run_cli("train", [*family, "--gin_file=runs/prompt_finetune.gin", *TASK_FLAGS,
                           f"--gin.MODEL_DIR='{model_dir}'", f"--gin.INITIAL_CHECKPOINT_PATH='{frozen_checkpoint}'",
                           f"--gin.TRAIN_STEPS={step}", "--gin.BATCH_SIZE=8", "--gin.PROMPT_LENGTH=3",
                           "--gin.STATS_PERIOD=3", "--gin.SAVE_PERIOD=6", "--gin.EVAL_PERIOD=0",
                           "--gin.DROPOUT_RATE=0.0", "--gin.LEARNING_RATE=0.05"], tmp_path)
  info = (model_dir / "model-info.txt").read_text()
  assert "encoder/prompt/prompt/lstm_1_backward/recurrent_kernel" in info and "trainable" in info
  exported = {p.name for p in (model_dir / "numpy_checkpoints" / f"checkpoint_{step}").iterdir()
              if not p.name.endswith(".npy")}
  assert "encoder.prompt.prompt.embedding" in exported and "encoder.prompt.prompt.prompt" not in exported
  assert "step 9/9" in proc.stderr, proc.stderr[-2000:]

  prompt_file = tmp_path / "prompt.npy"
  out = run_cli("scripts.export_prompt", [*family, "--gin_file=runs/export_prompt.gin", "--gin.PROMPT_LENGTH=3",
                                          f"--gin.NUMPY_CHECKPOINT_DIR='{model_dir}/numpy_checkpoints/checkpoint_{step}'",
                                          f"--gin.PROMPT_OUTPUT_PATH='{prompt_file}'"], tmp_path)
  assert str(prompt_file) in out.stdout
  prompt = np.load(prompt_file)
  assert prompt.shape == (3, 4) and prompt.dtype == np.float32

  common = [*TASK_FLAGS, "--gin.utils.DatasetConfig.split='validation'", "--gin.BATCH_SIZE=4",
            "--gin.PROMPT_LENGTH=3", "--gin.infer_script.infer.mode='predict_with_aux'"]
  # The P-tuning model from the run's own checkpoint (frozen weights from the record, encoder and embeddings)...
  run_cli("infer", [*family, "--gin_file=runs/infer.gin", *common, f"--gin.INFER_OUTPUT_DIR='{tmp_path / 'pt'}'",
                    f"--gin.CHECKPOINT_PATH='{model_dir / f'checkpoint_{step}'}'"], tmp_path)
  # ... and the plain prompt model on the frozen checkpoint, its prompt from the exported file.
  run_cli("infer", [*MODEL_FLAGS, "--gin_file=runs/prompt_infer.gin", *common,
                    f"--gin.INFER_OUTPUT_DIR='{tmp_path / 'plain'}'", f"--gin.CHECKPOINT_PATH='{frozen_checkpoint}'",
                    f"--gin.PROMPT_FILE='{prompt_file}'"], tmp_path)
  name = "cli_test_task-predict_with_aux.jsonl-00000-of-00001"
  (pt, pt_scores), (plain, plain_scores) = _predictions(tmp_path / "pt" / name), _predictions(tmp_path / "plain" / name)
  assert len(pt) == 8 and pt == plain
  np.testing.assert_allclose(plain_scores, pt_scores, rtol=1e-5, atol=1e-5)
  # Another prompt gives other scores: the equality above is the exported prompt's, not any prompt's.
  np.save(tmp_path / "other.npy", prompt + 0.5)
  run_cli("infer", [*MODEL_FLAGS, "--gin_file=runs/prompt_infer.gin", *common,
                    f"--gin.INFER_OUTPUT_DIR='{tmp_path / 'other'}'", f"--gin.CHECKPOINT_PATH='{frozen_checkpoint}'",
                    f"--gin.PROMPT_FILE='{tmp_path / 'other.npy'}'"], tmp_path)
  assert not np.allclose(_predictions(tmp_path / "other" / name)[1], pt_scores, atol=1e-4)
