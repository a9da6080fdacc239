"""Evaluation jobs for `benchmarks.eval_time`: rank-classification scoring and decoding, ours (JAX) and the PyTorch
peer (`transformers` T5 with a PEFT prompt-tuning adapter), on the same weights, prompt and tokens.

The parent writes the weights once (`write_shared_weights`: a Hugging Face T5 folder and a PEFT adapter); each
worker loads them, so both frameworks compute the same function and their outputs can be compared. Jobs:
  rank         every (example, label) row scored by a full forward pass, as `score_batch` in our evaluation runs it
  rank_shared  ours only: one encoder pass per example, shared by its label candidates (`score_candidates`)
  greedy       16 new tokens, greedy (T5X: `temperature_sample`, temperature 0; HF: `generate`, no sampling)
  beam4        16 new tokens, 4 beams, no length penalty (T5X `alpha=0`; HF `length_penalty=0`)
"""
from __future__ import annotations

import dataclasses
import functools
import pathlib
import re
import time
from typing import Any

import numpy as np

JOBS = ("rank", "rank_shared", "greedy", "beam4")
EOS_ID = 1


@dataclasses.dataclass(frozen=True)
class EvalShape:
  """A validation batch: `examples` inputs of `input_length` tokens after a `prompt_length` prompt, scored against
  `candidates` labels of `label_length` tokens (the label and EOS), or decoded for `decode_length` tokens."""

  examples: int = 32
  input_length: int = 128
  prompt_length: int = 100
  candidates: int = 2
  label_length: int = 2
  decode_length: int = 16
  beams: int = 4


def eval_tokens(shape: EvalShape, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Random inputs (ids 2.., no padding or EOS) and one label token per candidate followed by EOS."""
  rng = np.random.default_rng(seed)
  inputs = rng.integers(2, vocab_size, (shape.examples, shape.input_length), dtype=np.int32)
  labels = rng.choice(np.arange(2, vocab_size), (shape.candidates, shape.label_length - 1), replace=False)
  labels = np.concatenate([labels, np.full((shape.candidates, 1), EOS_ID)], axis=1).astype(np.int32)
  return {"inputs": inputs, "labels": labels}


def rank_rows(tokens: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """SeqIO's rank-classification layout: each example's rows are adjacent, one per candidate label."""
  inputs, labels = tokens["inputs"], tokens["labels"]
  c = labels.shape[0]
  targets = np.tile(labels, (inputs.shape[0], 1))
  return {"encoder_input_tokens": np.repeat(inputs, c, axis=0), "decoder_target_tokens": targets,
          "decoder_input_tokens": np.pad(targets, ((0, 0), (1, 0)))[:, :-1],
          "decoder_loss_weights": np.ones(targets.shape, np.float32)}


def write_shared_weights(out_dir: pathlib.Path, size: str, shape: EvalShape, seed: int = 0) -> dict[str, str]:
  """Random T5 1.1 weights as a Hugging Face folder, a random prompt as a PEFT adapter and as `.npy`."""
  import jax
  import jax.numpy as jnp
  from flax import linen as nn
  from prompt_tuning.export.peft import export_peft_prompt
  from prompt_tuning.models import EncoderDecoder, get_config
  from prompt_tuning.runtime.checkpoints.hf import save_hf_t5
  config = get_config(size, dtype=jnp.float32)
  ones = jnp.ones((1, 4), jnp.int32)
  params = jax.jit(lambda k: nn.meta.unbox(EncoderDecoder(config).init(k, ones, ones, ones)["params"]))(
      jax.random.PRNGKey(seed))
  hf_dir, adapter_dir = out_dir / "hf_t5", out_dir / "peft_prompt"
  save_hf_t5(jax.tree_util.tree_map(np.asarray, params), config, hf_dir)
  # Rows about as large as embedded tokens (T5's embeddings are N(0, 1)), as a prompt initialised from the vocabulary.
  prompt = np.random.default_rng(seed + 1).normal(size=(shape.prompt_length, config.emb_dim)).astype(np.float32)
  np.save(out_dir / "prompt.npy", prompt)
  export_peft_prompt(prompt, adapter_dir, str(hf_dir))
  return {"hf_dir": str(hf_dir), "adapter_dir": str(adapter_dir), "prompt": str(out_dir / "prompt.npy")}


class _Timed:
  """`run(n)` repeats the job n times and returns the seconds; `outputs()` is the last result as numpy."""

  def _once(self) -> Any:
    raise NotImplementedError

  def run(self, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
      self.last = self._once()
    self._sync()
    return time.perf_counter() - start

  def _sync(self) -> None:
    pass

  def outputs(self) -> np.ndarray:
    return np.asarray(self.last)


class OursEval(_Timed):
  """Our model (the T5 1.1 config of the Hugging Face folder, a prefix prompt) and its jitted job."""

  def __init__(self, spec: dict[str, Any]):
    import jax
    import jax.numpy as jnp
    from flax import linen as nn
    from flax import traverse_util
    from benchmarks.jax_step import make_model
    from prompt_tuning.family import PROMPT_REGEX
    from prompt_tuning.runtime import decoding
    from prompt_tuning.runtime.checkpoints.hf import load_hf_t5

    self._jax = jax
    shape = EvalShape(**spec["shape"])
    loaded, config = load_hf_t5(spec["weights"]["hf_dir"])
    config = config.replace(dtype=jnp.dtype(spec["dtype"]), **spec.get("config_overrides", {}))
    self.model = model = make_model(config, shape.prompt_length)
    job = spec["job"]
    if job == "greedy":
      model.decode_fn = functools.partial(decoding.temperature_sample, temperature=0.0, topk=1)
    elif job == "beam4":
      model.decode_fn = functools.partial(decoding.beam_search, alpha=0.0)
      model.default_decoder_params = {"num_decodes": shape.beams}
    abstract = jax.eval_shape(lambda: model.get_initial_variables(
        jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 4), "decoder_input_tokens": (1, 4)}))["params"]
    flat_loaded = traverse_util.flatten_dict(loaded, sep="/")
    prompt = np.load(spec["weights"]["prompt"])
    flat = {k: prompt if re.fullmatch(PROMPT_REGEX, k) else flat_loaded[k]
            for k in traverse_util.flatten_dict(nn.meta.unbox(abstract), sep="/")}
    self.params = jax.device_put(traverse_util.unflatten_dict(flat, sep="/"))
    tokens = eval_tokens(shape, config.vocab_size, spec.get("seed", 0))
    if job in ("rank", "rank_shared"):
      self.batch = jax.device_put(rank_rows(tokens))
      if job == "rank":
        self.fn = jax.jit(model.score_batch)
      else:
        self.fn = jax.jit(functools.partial(model.score_candidates, num_candidates=shape.candidates))
    else:
      inputs = tokens["inputs"]
      self.batch = jax.device_put({"encoder_input_tokens": inputs,
                                   "decoder_input_tokens": np.zeros((len(inputs), shape.decode_length), np.int32)})
      self.fn = jax.jit(model.predict_batch)
    self.info = {"job": job}

  def _once(self) -> Any:
    return self.fn(self.params, self.batch)

  def _sync(self) -> None:
    self._jax.block_until_ready(self.last)


class PeerEval(_Timed):
  """`transformers` T5 loaded from the folder, the PEFT adapter on top, in inference mode."""

  def __init__(self, spec: dict[str, Any]):
    import os
    import peft
    import torch
    import transformers
    torch.set_num_threads(os.cpu_count() or 1)
    self._torch = torch
    shape = EvalShape(**spec["shape"])
    base = transformers.T5ForConditionalGeneration.from_pretrained(spec["weights"]["hf_dir"])
    self.model = peft.PeftModel.from_pretrained(base, spec["weights"]["adapter_dir"]).eval()
    tokens = eval_tokens(shape, base.config.vocab_size, spec.get("seed", 0))
    self.job, self.shape = spec["job"], shape
    as_long = lambda x: torch.as_tensor(x, dtype=torch.long)
    if self.job == "rank":
      rows = rank_rows(tokens)
      self.inputs = {"input_ids": as_long(rows["encoder_input_tokens"]),
                     "decoder_input_ids": as_long(rows["decoder_input_tokens"])}
      self.targets = as_long(rows["decoder_target_tokens"])
    else:
      self.inputs = {"input_ids": as_long(tokens["inputs"])}
    self.inputs["attention_mask"] = torch.ones_like(self.inputs["input_ids"])
    self.info = {"job": self.job, "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__}

  def _once(self) -> Any:
    with self._torch.inference_mode():
      if self.job == "rank":  # the same computation as `score_batch`: summed target log-likelihood per row
        logits = self.model(**self.inputs).logits
        log_probs = self._torch.log_softmax(logits.float(), dim=-1)
        return log_probs.gather(-1, self.targets[..., None])[..., 0].sum(-1).numpy()
      beams = 1 if self.job == "greedy" else self.shape.beams
      out = self.model.generate(**self.inputs, max_new_tokens=self.shape.decode_length, num_beams=beams,
                                do_sample=False, length_penalty=0.0, early_stopping=False)
      return out[:, 1:].numpy()  # drop the decoder start token


BUILDERS = {"ours": OursEval, "peer": PeerEval}
