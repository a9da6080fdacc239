"""The train / eval / infer CLIs with a decoder-only model: a Hugging Face Llama folder as INITIAL_CHECKPOINT_PATH,
a text-to-text SeqIO task as prefix-LM features, the prompt exported, eval's predictions through the prefilled
cache, resume, the prompt initialisers and placements."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from cli_utils import TASK_FLAGS, TESTS_DIR, run_cli

torch = pytest.importorskip("torch", reason="needs the hf extra: pip install 'prompt_tuning[hf]'")
transformers = pytest.importorskip("transformers", reason="needs the hf extra: pip install 'prompt_tuning[hf]'")

PROMPT_FILE = "numpy_checkpoints/checkpoint_{step}/decoder.prompt.prompt.prompt"
MODEL_FLAGS = ["--gin_file=models/llama_prompt.gin", "--gin_file=byte_vocab_tiny.gin",
               f"--gin_search_paths={TESTS_DIR / 'gin'}", "--gin.ACTIVATION_DTYPE='float32'", "--gin.BATCH_SIZE=4",
               "--gin.PROMPT_LENGTH=3"]
EVAL_FLAGS = [*TASK_FLAGS, "--gin.utils.DatasetConfig.split='validation'"]


@pytest.fixture(name="llama_dir", scope="module")
def fixture_llama_dir(tmp_path_factory) -> pathlib.Path:
  """A random tiny Llama (grouped-query attention, tied embeddings) over the byte vocabulary's 384 rows."""
  torch.manual_seed(0)
  config = transformers.LlamaConfig(vocab_size=384, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
  path = tmp_path_factory.mktemp("llama")
  transformers.LlamaForCausalLM(config).save_pretrained(path)
  return path


def train_flags(model_dir: pathlib.Path, llama_dir: pathlib.Path, steps: int, *extra: str,
                prompt_init: str = "random_uniform") -> list[str]:
  return [*MODEL_FLAGS, f"--gin_file=prompts/{prompt_init}.gin", "--gin_file=runs/prompt_finetune.gin", *TASK_FLAGS,
          f"--gin.MODEL_DIR='{model_dir}'", f"--gin.INITIAL_CHECKPOINT_PATH='{llama_dir}'",
          f"--gin.TRAIN_STEPS={steps}", "--gin.STATS_PERIOD=2", "--gin.SAVE_PERIOD=2", "--gin.KEEP_CHECKPOINTS=None",
          *extra]


@pytest.fixture(name="llama_run", scope="module")
def fixture_llama_run(tmp_path_factory, llama_dir) -> pathlib.Path:
  """The Llama prompt-tuned for 4 steps by the train CLI: saves at 0, 2 and 4 (all kept), inference eval at 4."""
  model_dir = tmp_path_factory.mktemp("llama_run") / "run"
  proc = run_cli("train", train_flags(model_dir, llama_dir, 4, "--gin.EVAL_PERIOD=4"), model_dir.parent)
  assert "step 4/4" in proc.stderr
  return model_dir


def _predictions(path: pathlib.Path) -> list[str]:
  return [json.loads(l)["prediction"] for l in path.open()]


def test_prompt_tuning_a_hugging_face_llama_through_the_train_cli(tmp_path, llama_dir, llama_run):
  model_dir = llama_run
  prompt = np.load(model_dir / PROMPT_FILE.format(step=4))
  assert prompt.shape == (3, 16) and prompt.dtype == np.float32
  assert not np.array_equal(prompt, np.load(model_dir / PROMPT_FILE.format(step=2)))  # it trained
  info = (model_dir / "model-info.txt").read_text().splitlines()
  assert next(l for l in info if "decoder/prompt/prompt/prompt" in l).endswith("trainable")
  assert any(l.endswith("frozen") and "decoder/layers_1/self_attention/key/kernel" in l and "(16, 8)" in l
             for l in info), info  # one key/value head of 8
  metrics = [json.loads(l) for l in (model_dir / "inference_eval" / "cli_test_task-metrics.jsonl").open()]
  assert [m["step"] for m in metrics] == [4] and "accuracy" in metrics[0]

  # Infer with the exported prompt and the Llama folder (LLAMA_DIR names it when there is no initial checkpoint).
  out = tmp_path / "infer"
  run_cli("infer", [*MODEL_FLAGS, "--gin_file=runs/prompt_infer.gin", *EVAL_FLAGS,
                    f"--gin.CHECKPOINT_PATH='{llama_dir}'", f"--gin.LLAMA_DIR='{llama_dir}'",
                    f"--gin.PROMPT_FILE='{model_dir / PROMPT_FILE.format(step=4)}'", f"--gin.INFER_OUTPUT_DIR='{out}'"],
          tmp_path)
  rows = [json.loads(l) for path in out.glob("cli_test_task-predict.jsonl-*-of-*") if path.suffix != ".COMPLETED"
          for l in path.open()]
  assert len(rows) == 8 and all("prediction" in row for row in rows)
  # The same predictions as the training run's inference eval at step 4.
  assert [r["prediction"] for r in rows] == _predictions(model_dir / "inference_eval" / "cli_test_task-000004.jsonl")


def test_a_stopped_decoder_only_run_resumes_bit_for_bit(tmp_path, llama_dir, llama_run):
  """Train to step 2, stop; the same command with TRAIN_STEPS=4 resumes (parameters, optimizer state, data
  position) and ends where the uninterrupted run of `llama_run` did."""
  model_dir = tmp_path / "run"
  run_cli("train", train_flags(model_dir, llama_dir, 2, "--gin.EVAL_PERIOD=0"), tmp_path)
  assert not (model_dir / "checkpoint_4").exists()
  resumed = run_cli("train", train_flags(model_dir, llama_dir, 4, "--gin.EVAL_PERIOD=0"), tmp_path)
  assert f"Resuming from {model_dir}/checkpoint_2 (data position 2)" in resumed.stderr, resumed.stderr[-3000:]
  for step in (2, 4):
    np.testing.assert_array_equal(np.load(model_dir / PROMPT_FILE.format(step=step)),
                                  np.load(llama_run / PROMPT_FILE.format(step=step)))


def _scores(out: pathlib.Path) -> np.ndarray:
  """The per-example target log-likelihoods an infer run with mode='score' wrote."""
  return np.array([json.loads(l)["score"] for l in (out / "cli_test_task-score.jsonl-00000-of-00001").open()])


def _infer_scores(cwd: pathlib.Path, name: str, *flags: str) -> np.ndarray:
  """Rank-classification scores of the validation split by the infer CLI on the decoder-only model."""
  out = cwd / name
  run_cli("infer", [*MODEL_FLAGS, *EVAL_FLAGS, *flags, "--gin.infer_script.infer.mode='score'",
                    f"--gin.INFER_OUTPUT_DIR='{out}'"], cwd)
  return _scores(out)


@pytest.fixture(name="trained_scores", scope="module")
def fixture_trained_scores(tmp_path_factory, llama_dir, llama_run) -> np.ndarray:
  """Scores of the Llama folder with the prompt `llama_run` exported at step 4 (runs/prompt_infer.gin)."""
  return _infer_scores(tmp_path_factory.mktemp("trained_scores"), "infer", "--gin_file=runs/prompt_infer.gin",
                       f"--gin.CHECKPOINT_PATH='{llama_dir}'", f"--gin.LLAMA_DIR='{llama_dir}'",
                       f"--gin.PROMPT_FILE='{llama_run / PROMPT_FILE.format(step=4)}'")


def test_eval_and_infer_of_a_decoder_only_runs_checkpoint(tmp_path, llama_dir, llama_run, trained_scores):
  """T5X's habit on the run's own checkpoint (frozen weights from the Llama folder the run recorded): eval gives
  the training run's metrics, infer the scores of the exported prompt on the folder."""
  assert json.loads((llama_run / "frozen_weights.json").read_text())["path"] == str(llama_dir)
  trained = json.loads((llama_run / "inference_eval" / "cli_test_task-metrics.jsonl").read_text().splitlines()[-1])
  checkpoint = [f"--gin.LLAMA_DIR='{llama_dir}'", f"--gin.CHECKPOINT_PATH='{llama_run / 'checkpoint_4'}'"]
  run_cli("eval", [*MODEL_FLAGS, "--gin_file=runs/eval.gin", *EVAL_FLAGS, *checkpoint,
                   f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'eval'}'"], tmp_path)
  metrics = json.loads((tmp_path / "eval" / "cli_test_task-metrics.jsonl").read_text().splitlines()[-1])
  assert metrics["step"] == 4 and metrics["accuracy"] == trained["accuracy"], (metrics, trained)
  assert _predictions(tmp_path / "eval" / "cli_test_task-000004.jsonl") == _predictions(
      llama_run / "inference_eval" / "cli_test_task-000004.jsonl")
  scores = _infer_scores(tmp_path, "infer", "--gin_file=runs/infer.gin", *checkpoint)
  assert scores.shape == (8,) and np.all(scores < 0)
  np.testing.assert_allclose(scores, trained_scores, rtol=1e-6)


def _embedding(llama_dir: pathlib.Path) -> np.ndarray:
  from safetensors.numpy import load_file
  return load_file(llama_dir / "model.safetensors")["model.embed_tokens.weight"]


def _byte_ids(text: str) -> list[int]:
  return [b + 3 for b in text.encode()]  # seqio.ByteVocabulary: pad, EOS, UNK, then the bytes


@pytest.mark.parametrize("prompt_init", ["from_class_labels", "from_sampled_vocab", "from_string", "from_file"])
def test_prompt_initialisers_read_the_llama_folder_or_a_file(tmp_path, llama_dir, prompt_init):
  """The initialisers of the encoder's prompt (prompts/*.gin), on the decoder-only model: the prompt the run starts
  from (its step-0 export) is built from the Llama folder's embedding table, or is the file."""
  table = _embedding(llama_dir)
  given = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
  np.save(tmp_path / "given.npy", given)
  extra = {"from_class_labels": ["--gin.CLASS_LABELS=['yes', 'no']"], "from_string": ["--gin.PROMPT_TEXT='is'"],
           "from_file": [f"--gin.PROMPT_FILE='{tmp_path / 'given.npy'}'"], "from_sampled_vocab": []}[prompt_init]
  model_dir = tmp_path / "run"
  run_cli("train", train_flags(model_dir, llama_dir, 1, "--gin.EVAL_PERIOD=0", *extra, prompt_init=prompt_init),
          tmp_path)
  prompt = np.load(model_dir / PROMPT_FILE.format(step=0))
  in_table = [int(np.flatnonzero((table == row).all(axis=1))[0]) if (table == row).all(axis=1).any() else None
              for row in prompt]
  if prompt_init == "from_file":
    np.testing.assert_array_equal(prompt, given)
    return
  if prompt_init == "from_class_labels":  # row i: the mean embedding of label i's tokens
    np.testing.assert_allclose(prompt[:2], [table[_byte_ids(w)].mean(axis=0) for w in ("yes", "no")], rtol=1e-6)
  if prompt_init == "from_string":  # the text's token embeddings first
    assert in_table[:2] == _byte_ids("is"), in_table
  sampled = in_table[{"from_class_labels": 2, "from_string": 2, "from_sampled_vocab": 0}[prompt_init]:]
  assert all(i is not None for i in sampled), in_table  # the other rows are rows of the table
  if prompt_init == "from_sampled_vocab":
    assert len(set(in_table)) == 3, in_table  # drawn without replacement


def test_an_unsupported_prompt_placement_is_one_clear_error(tmp_path, llama_dir):
  """The decoder-only model takes the prompt before the BOS slot or after it (models/llama_prompt.gin's
  PROMPT_COMBINATION); the encoder's third placement, before the inputs' EOS, is refused in one line."""
  proc = run_cli("train", train_flags(tmp_path / "run", llama_dir, 1, "--gin.PROMPT_COMBINATION='suffix_before_eos'"),
                 tmp_path, check=False)
  last = proc.stderr.strip().splitlines()[-1]
  assert proc.returncode != 0 and last.startswith("error:") and "suffix_before_eos" in last, proc.stderr[-3000:]
  assert "prefix_after_bos" in last


def test_task_prompt_bank_and_prompt_ensemble_on_the_decoder_only_model(tmp_path, llama_dir, llama_run,
                                                                        trained_scores):
  """serving/prompt_bank.gin and serving/ensemble.gin with the infer CLI on the Llama folder: the bank gives the
  task's examples their task's prompt (id 1: the trained one), an ensemble's score is its members' mean."""
  trained = llama_run / PROMPT_FILE.format(step=4)
  other = tmp_path / "other.npy"
  np.save(other, np.random.default_rng(1).normal(scale=3.0, size=(3, 16)).astype(np.float32))
  folder = [f"--gin.LLAMA_DIR='{llama_dir}'", f"--gin.CHECKPOINT_PATH='{llama_dir}'"]
  other_scores = _infer_scores(tmp_path, "other", "--gin_file=runs/prompt_infer.gin", *folder,
                               f"--gin.PROMPT_FILE='{other}'")
  assert np.abs(other_scores - trained_scores).min() > 1e-3  # the two prompts score every example differently
  bank = _infer_scores(tmp_path, "bank", "--gin_file=runs/infer.gin", "--gin_file=serving/prompt_bank.gin", *folder,
                       f"--gin.BANK_PROMPTS={{'another_task': '{other}', 'cli_test_task': '{trained}'}}")
  np.testing.assert_allclose(bank, trained_scores, rtol=1e-6)
  ensemble = _infer_scores(tmp_path, "ensemble", "--gin_file=runs/infer.gin", "--gin_file=serving/ensemble.gin",
                           *folder, f"--gin.ENSEMBLE_PROMPTS=['{trained}', '{other}']")
  np.testing.assert_allclose(ensemble, (trained_scores + other_scores) / 2, rtol=1e-5)
