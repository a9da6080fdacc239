"""The PyTorch peer: Hugging Face PEFT prompt tuning (and plain fine-tuning) of `transformers` T5, or of a
`LlamaForCausalLM` (PEFT's CAUSAL_LM prompt tuning; inputs then targets as one sequence, loss on the targets).

Same T5 1.1 shapes as ours (the `config.json` dict from `hf_config_from_t5`), random weights, the same batch
and lengths, and `transformers`' Adafactor set as our optimizer: prompt tuning lr 0.3, decay 0.8, clipping 1,
weight decay 1e-5, no parameter scaling; model tuning lr 1e-3 with parameter scaling, no weight decay.

Needs the optional `torch`, `transformers` and `peft` packages; nothing else in the project imports this.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Mapping

import torch
import transformers
from transformers.optimization import Adafactor

from benchmarks.shapes import StepShape, random_batch

PEER_MODES = ("prompt", "model")


def hf_model(hf_config: Mapping[str, Any], seed: int = 0) -> transformers.PreTrainedModel:
  """A randomly initialised T5 with an untied output head (T5 1.1; transformers >= 5 ties it when built), or a
  `LlamaForCausalLM` for a Llama config."""
  torch.manual_seed(seed)
  if hf_config.get("model_type") == "llama":
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**{k: v for k, v in hf_config.items()
                                                                     if k != "model_type"}))
  config = transformers.T5Config(**{k: v for k, v in hf_config.items() if k not in ("architectures", "model_type")})
  model = transformers.T5ForConditionalGeneration(config)
  if not hf_config.get("tie_word_embeddings", True) and model.lm_head.weight is model.shared.weight:
    model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach().clone())
  return model


def _adafactor(params: Any, mode: str) -> Adafactor:
  common = dict(relative_step=False, warmup_init=False, decay_rate=-0.8, clip_threshold=1.0)
  if mode == "prompt":
    return Adafactor(params, lr=0.3, scale_parameter=False, weight_decay=1e-5, **common)
  return Adafactor(params, lr=1e-3, scale_parameter=True, weight_decay=0.0, **common)


@dataclasses.dataclass
class TorchStep:
  """A PEFT (or plain HF) train step: forward, backward, Adafactor; `run(n)` waits for the device at the end."""

  model: torch.nn.Module
  optimizer: Adafactor
  batch: dict[str, torch.Tensor]
  device: str
  autocast_dtype: torch.dtype | None
  trainable_params: int

  def _autocast(self):
    if self.autocast_dtype is None:
      return contextlib.nullcontext()
    return torch.autocast("cuda" if self.device == "gpu" else "cpu", dtype=self.autocast_dtype)

  def step(self) -> None:
    with self._autocast():
      loss = self.model(**self.batch).loss
    loss.backward()
    self.optimizer.step()
    self.optimizer.zero_grad(set_to_none=True)

  def sync(self) -> None:
    if self.device == "gpu":
      torch.cuda.synchronize()

  def run(self, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
      self.step()
    self.sync()
    return time.perf_counter() - start

  def count_flops(self) -> float:
    """FLOPs of one step as PyTorch's FlopCounterMode counts them (matmuls and attention); runs one step."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
      self.step()
    self.sync()
    return float(counter.get_total_flops())


def build_step(hf_config: Mapping[str, Any], shape: StepShape, mode: str, device: str = "cpu",
               dtype: str = "float32", seed: int = 0) -> TorchStep:
  """`mode="prompt"`: PEFT PROMPT_TUNING with `shape.prompt_length` virtual tokens; "model": all weights train."""
  if mode not in PEER_MODES:
    raise ValueError(f"Peer mode {mode!r} is not one of {PEER_MODES}.")
  import peft

  dev = "cuda" if device == "gpu" else "cpu"
  model = hf_model(hf_config, seed)
  causal_lm = hf_config.get("model_type") == "llama"
  if mode == "prompt":
    # One [P, d] table, as ours: PEFT's seq2seq default (2) adds rows that prompt tuning never reads.
    peft_config = peft.PromptTuningConfig(task_type="CAUSAL_LM" if causal_lm else "SEQ_2_SEQ_LM",
                                          num_virtual_tokens=shape.prompt_length, num_transformer_submodules=1)
    model = peft.get_peft_model(model, peft_config)
  else:
    shape = shape.without_prompt()
  model.to(dev).train()
  trainable = [p for p in model.parameters() if p.requires_grad]
  numpy_batch = random_batch(shape, hf_config["vocab_size"], seed)
  as_long = lambda name: torch.as_tensor(numpy_batch[name], dtype=torch.long, device=dev)
  batch = {"input_ids": as_long("encoder_input_tokens"),
           "attention_mask": torch.ones(numpy_batch["encoder_input_tokens"].shape, dtype=torch.long, device=dev),
           "decoder_input_ids": as_long("decoder_input_tokens"), "labels": as_long("decoder_target_tokens")}
  if causal_lm:  # one sequence, inputs then targets; the loss on the targets only
    ids = torch.cat([batch["input_ids"], batch["labels"]], dim=1)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "labels": torch.cat([torch.full_like(batch["input_ids"], -100), batch["labels"]], dim=1)}
  autocast = None if dtype == "float32" else getattr(torch, dtype)
  return TorchStep(model, _adafactor(trainable, mode), batch, device, autocast, sum(p.numel() for p in trainable))
