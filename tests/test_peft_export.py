"""A prompt exported as a PEFT adapter gives, in PyTorch, the logits our prompted model gives.

Tolerance as in test_hf_parity: rtol 1e-4, atol 1e-4 * max|HF logit|, on non-padding target positions.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from prompt_tuning import errors, prompts
from prompt_tuning.export import peft as peft_export
from prompt_tuning.runtime.checkpoints import hf
from prompt_tuning.scripts import export_peft

pytest.importorskip("torch", reason="needs the hf extra: pip install 'prompt_tuning[hf]'")
pytest.importorskip("transformers", reason="needs the hf extra: pip install 'prompt_tuning[hf]'")
peft = pytest.importorskip("peft", reason="needs the hf extra: pip install 'prompt_tuning[hf]'")

# Imported after the skips: test_hf_parity needs torch at import time.
# pylint: disable-next=g-import-not-at-top
from cli_utils import run_cli
from test_hf_parity import (T5_1_1_CONFIGS, assert_logits_match, hf_logits, our_logits, random_batch,
                            random_hf_t5)

PROMPT_LENGTH = 5


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
  """A random T5 1.1 saved as a Hugging Face dir: (torch model, its dir, our params, our config)."""
  path = tmp_path_factory.mktemp("base")
  model = random_hf_t5(seed=7, **T5_1_1_CONFIGS["d24_h3_k4_f40_3+1"])
  model.save_pretrained(path)
  params, config = hf.load_hf_t5(path)
  return model, path, params, config


def prompted_logits(params, config, prompt: np.ndarray, batch) -> np.ndarray:
  """Our model with `prompt` prepended to the encoder input ("prefix" combination)."""
  factory = lambda: prompts.PromptedInputs(prompts.Prompt(len(prompt), initializer=prompts.from_array(prompt)))
  params = {**params, "encoder": {**params["encoder"], "prompt": {"prompt": {"prompt": prompt}}}}
  return our_logits(params, config, *batch, prompt_factory=factory)


def peft_logits(model, adapter_dir, batch) -> np.ndarray:
  wrapped = peft.PeftModel.from_pretrained(model, str(adapter_dir)).eval()  # prompt tuning leaves `model` as is
  return hf_logits(wrapped, *batch[:2])


@pytest.mark.parametrize("submodules", [1, 2])
def test_peft_prompt_matches_our_prompted_model(base_model, tmp_path, submodules):
  model, path, params, config = base_model
  prompt = np.random.default_rng(submodules).normal(size=(PROMPT_LENGTH, config.emb_dim)).astype(np.float32)
  out = peft_export.export_peft_prompt(prompt, tmp_path / "adapter", str(path),
                                       num_transformer_submodules=submodules)
  batch = random_batch(seed=4)
  ours = prompted_logits(params, config, prompt, batch)
  assert_logits_match(ours, peft_logits(model, out, batch), batch[2])
  assert not np.allclose(ours, our_logits(params, config, *batch), atol=1e-3)  # the prompt does change the output


def test_cli_writes_an_adapter_peft_reads(base_model, tmp_path):
  model, path, params, config = base_model
  prompt = np.random.default_rng(5).uniform(-0.5, 0.5, size=(PROMPT_LENGTH, config.emb_dim)).astype(np.float32)
  np.save(tmp_path / "prompt.npy", prompt)
  run_cli("scripts.export_peft", ["--prompt_file", str(tmp_path / "prompt.npy"), "--output_dir",
                                   str(tmp_path / "adapter"), "--base_model", str(path)], tmp_path)
  written = json.loads((tmp_path / "adapter" / peft_export.ADAPTER_CONFIG_FILE).read_text())
  assert written["num_virtual_tokens"] == PROMPT_LENGTH and written["num_transformer_submodules"] == 1
  batch = random_batch(seed=6)
  assert_logits_match(prompted_logits(params, config, prompt, batch), peft_logits(model, tmp_path / "adapter", batch),
                      batch[2])


def test_cli_reports_a_width_mismatch(base_model, tmp_path, capsys):
  _, path, _, config = base_model
  np.save(tmp_path / "prompt.npy", np.zeros((PROMPT_LENGTH, config.emb_dim + 1), np.float32))
  with pytest.raises(SystemExit) as stop:
    export_peft.main(["--prompt_file", str(tmp_path / "prompt.npy"), "--output_dir", str(tmp_path / "adapter"),
                      "--base_model", str(path)])
  assert stop.value.code == errors.EXIT_USER_ERROR and "d_model=24" in capsys.readouterr().err
  assert not (tmp_path / "adapter" / peft_export.ADAPTER_WEIGHTS_FILE).exists()


def test_cli_reports_a_missing_prompt_file(tmp_path, capsys):
  with pytest.raises(SystemExit) as stop:
    export_peft.main(["--prompt_file", str(tmp_path / "absent.npy"), "--output_dir", str(tmp_path),
                      "--base_model", "t5-base"])
  assert stop.value.code == errors.EXIT_USER_ERROR and "absent.npy" in capsys.readouterr().err


@pytest.mark.parametrize("prompt,kwargs,message", [
    (np.zeros((3,)), {}, "shape"),
    (np.zeros((3, 24)), {"token_dim": 16}, "token_dim=16"),
    (np.zeros((3, 24)), {"task_type": "seq2seq"}, "task_type"),
    (np.zeros((3, 24)), {"num_transformer_submodules": 3}, "num_transformer_submodules=3"),
])
def test_bad_export_arguments_raise(tmp_path, prompt, kwargs, message):
  with pytest.raises(ValueError, match=message):
    peft_export.export_peft_prompt(prompt, tmp_path, "t5-base", **kwargs)
