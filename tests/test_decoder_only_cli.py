"""The train CLI with a decoder-only model: a Hugging Face Llama folder as INITIAL_CHECKPOINT_PATH, a text-to-text
SeqIO task as prefix-LM features, the prompt exported, and eval's predictions through the prefilled cache."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from cli_utils import TASK_FLAGS, TESTS_DIR, run_cli

torch = pytest.importorskip("torch", reason="needs the hf extra: pip install 'prompt_tuning[hf]'")
transformers = pytest.importorskip("transformers", reason="needs the hf extra: pip install 'prompt_tuning[hf]'")

PROMPT_FILE = "numpy_checkpoints/checkpoint_{step}/decoder.prompt.prompt.prompt"


@pytest.fixture(name="llama_dir", scope="module")
def fixture_llama_dir(tmp_path_factory) -> pathlib.Path:
  """A random tiny Llama (grouped-query attention, tied embeddings) over the byte vocabulary's 384 rows."""
  torch.manual_seed(0)
  config = transformers.LlamaConfig(vocab_size=384, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
  path = tmp_path_factory.mktemp("llama")
  transformers.LlamaForCausalLM(config).save_pretrained(path)
  return path


def test_prompt_tuning_a_hugging_face_llama_through_the_train_cli(tmp_path, llama_dir):
  model_dir = tmp_path / "run"
  model_flags = ["--gin_file=models/llama_prompt.gin", "--gin_file=byte_vocab_tiny.gin",
                 f"--gin_search_paths={TESTS_DIR / 'gin'}", "--gin.ACTIVATION_DTYPE='float32'", "--gin.BATCH_SIZE=4",
                 "--gin.PROMPT_LENGTH=3"]
  flags = [*model_flags, "--gin_file=prompts/random_uniform.gin", "--gin_file=runs/prompt_finetune.gin", *TASK_FLAGS,
           f"--gin.MODEL_DIR='{model_dir}'", f"--gin.INITIAL_CHECKPOINT_PATH='{llama_dir}'", "--gin.TRAIN_STEPS=4",
           "--gin.STATS_PERIOD=2", "--gin.SAVE_PERIOD=2", "--gin.EVAL_PERIOD=4", "--gin.KEEP_CHECKPOINTS=None"]
  proc = run_cli("train", flags, tmp_path)
  assert "step 4/4" in proc.stderr
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
  run_cli("infer", [*model_flags, "--gin_file=runs/prompt_infer.gin", *TASK_FLAGS,
                    f"--gin.CHECKPOINT_PATH='{llama_dir}'", f"--gin.LLAMA_DIR='{llama_dir}'",
                    f"--gin.PROMPT_FILE='{model_dir / PROMPT_FILE.format(step=4)}'",
                    "--gin.utils.DatasetConfig.split='validation'", f"--gin.INFER_OUTPUT_DIR='{out}'"], tmp_path)
  rows = [json.loads(l) for path in out.glob("cli_test_task-predict.jsonl-*-of-*") if path.suffix != ".COMPLETED"
          for l in path.open()]
  assert len(rows) == 8 and all("prediction" in row for row in rows)
