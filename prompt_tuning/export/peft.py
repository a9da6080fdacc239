"""Export a trained prompt as a Hugging Face PEFT prompt-tuning adapter (`PeftModel.from_pretrained` loads it).

PEFT stores a prompt-tuning adapter as `adapter_model.safetensors` holding one tensor, `prompt_embeddings`
`[num_virtual_tokens * num_transformer_submodules, token_dim]`, plus `adapter_config.json`. For a
sequence-to-sequence model PEFT's PROMPT_TUNING prepends rows `[:num_virtual_tokens]` to the encoder's embedded
input and extends the attention mask with ones (in `forward` and in `generate`); the decoder input is left alone.
That is exactly our "prefix" combination, so `num_transformer_submodules=1` (one `[P, d]` table) is the faithful
choice. PEFT's own default for SEQ_2_SEQ_LM is 2; with 2 we write the prompt as the first P rows and zeros as the
second P, which PROMPT_TUNING never reads.
"""
from __future__ import annotations

import json
from typing import Any

from etils import epath
import numpy as np

from prompt_tuning.runtime.checkpoints import hf

ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
PROMPT_KEY = "prompt_embeddings"
TASK_TYPES = ("SEQ_2_SEQ_LM", "CAUSAL_LM", "SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION")


def adapter_config(num_virtual_tokens: int, token_dim: int, base_model_name_or_path: str,
                   task_type: str = "SEQ_2_SEQ_LM", num_transformer_submodules: int = 1) -> dict[str, Any]:
  """The `adapter_config.json` of a PROMPT_TUNING adapter (PEFT fills layer/head counts from the base model)."""
  return {
      "peft_type": "PROMPT_TUNING",
      "task_type": task_type,
      "num_virtual_tokens": num_virtual_tokens,
      "token_dim": token_dim,
      "num_transformer_submodules": num_transformer_submodules,
      "base_model_name_or_path": base_model_name_or_path,
      "inference_mode": True,
      "prompt_tuning_init": "RANDOM",  # ignored on load: the stored embeddings replace the initial ones
  }


def _base_model_width(base_model_name_or_path: str) -> int | None:
  """The width of a local Hugging Face model dir, or None when the base is a hub name or has no config."""
  config_file = epath.Path(base_model_name_or_path) / hf.CONFIG_FILE
  if "://" in base_model_name_or_path or not config_file.exists():
    return None
  config = json.loads(config_file.read_text())
  return config.get("d_model") or config.get("hidden_size")  # T5, or a decoder-only (Llama) model


def export_peft_prompt(prompt: np.ndarray, out_dir: epath.PathLike, base_model_name_or_path: str,
                       task_type: str = "SEQ_2_SEQ_LM", token_dim: int | None = None,
                       num_transformer_submodules: int = 1) -> epath.Path:
  """Write `prompt` `[P, d]` to `out_dir` as a PEFT PROMPT_TUNING adapter of `base_model_name_or_path`."""
  prompt = np.asarray(prompt, dtype=np.float32)
  if prompt.ndim != 2 or 0 in prompt.shape:
    raise ValueError(f"prompt has shape {prompt.shape}; export one prompt of shape [length, model width].")
  length, width = prompt.shape
  if token_dim is not None and token_dim != width:
    raise ValueError(f"token_dim={token_dim} but the prompt is {width} wide; leave token_dim unset to use {width}.")
  base_width = _base_model_width(base_model_name_or_path)
  if base_width is not None and base_width != width:
    raise ValueError(f"The prompt is {width} wide but base model {base_model_name_or_path!r} has d_model="
                     f"{base_width}; export against the model the prompt was trained on.")
  if task_type not in TASK_TYPES:
    raise ValueError(f"task_type={task_type!r} is not a PEFT task type; choose one of {TASK_TYPES}.")
  if num_transformer_submodules not in (1, 2):
    raise ValueError(f"num_transformer_submodules={num_transformer_submodules} must be 1 (encoder prompt only, "
                     "as trained) or 2 (PEFT's seq2seq layout; the decoder half is written as zeros).")
  table = np.concatenate([prompt, np.zeros_like(prompt)]) if num_transformer_submodules == 2 else prompt
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  hf.write_safetensors(out / ADAPTER_WEIGHTS_FILE, {PROMPT_KEY: table})
  hf.write_json(out / ADAPTER_CONFIG_FILE, adapter_config(length, width, base_model_name_or_path, task_type,
                                                           num_transformer_submodules))
  return out
