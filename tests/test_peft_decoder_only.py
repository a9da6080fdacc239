"""PEFT prompt tuning (CAUSAL_LM) of a random LlamaForCausalLM and ours with the same prompt agree.

PEFT prepends the virtual tokens' embeddings to the inputs' under Llama's causal mask, so the prompt positions read
earlier prompt rows only: ours matches with PROMPT_ATTENTION=['prompt->input', 'prompt->prompt;causal'] and the
"prefix" combination. Logits compare at every real position (rtol 1e-4, atol 1e-4 * max|logit|), the loss (PEFT's
mean over labelled tokens = our sum / NUM_REAL_TARGET_TOKENS, no z-loss) at rtol 1e-5.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning import prompts
from prompt_tuning.export import peft as peft_export
from prompt_tuning.family import PROMPT_REGEX, PromptFamily
from prompt_tuning.models.decoder_only import DecoderOnly
from prompt_tuning.runtime import optim
from prompt_tuning.runtime.checkpoints import hf_llama
from prompt_tuning.runtime.models import DecoderOnlyModel

torch = pytest.importorskip("torch", reason="needs the hf extra: pip install 'prompt_tuning[hf]'")
transformers = pytest.importorskip("transformers", reason="needs the hf extra: pip install 'prompt_tuning[hf]'")
peft = pytest.importorskip("peft", reason="needs peft: pip install peft")

VOCAB = 64
PROMPT_LENGTH = 5
WIDTH = 32
CAUSAL_PROMPT = ["input->input", "input->prompt", "prompt->input", "prompt->prompt;causal"]


@pytest.fixture(name="llama_dir", scope="module")
def fixture_llama_dir(tmp_path_factory):
  """A random Llama with grouped-query attention and tied embeddings, saved as Hugging Face does."""
  torch.manual_seed(0)
  config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=48, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                    initializer_range=0.2, attn_implementation="eager")
  model = transformers.LlamaForCausalLM(config).eval()
  path = tmp_path_factory.mktemp("llama")
  model.save_pretrained(path)
  return path


def hf_batch() -> tuple[np.ndarray, np.ndarray]:
  """Token ids [BOS, x..., EOS] right-padded with 0, and labels: -100 on padding and on BOS (which PEFT would
  otherwise predict from the last prompt position)."""
  ids = np.array([[1, 7, 9, 11, 13, 15, 2, 0], [1, 20, 21, 2, 0, 0, 0, 0]], np.int64)
  labels = np.where(ids > 0, ids, -100)
  labels[:, 0] = -100
  return ids, labels


def our_batch(ids: np.ndarray) -> dict[str, np.ndarray]:
  """The same sequences as T5X decoder features: inputs are the ids but the last, targets the ids but the first."""
  targets = ids[:, 1:].astype(np.int32)
  return {"decoder_input_tokens": ids[:, :-1].astype(np.int32) * (targets > 0), "decoder_target_tokens": targets,
          "decoder_loss_weights": (targets > 0).astype(np.int32)}


def peft_model(llama_dir, prompt: np.ndarray):
  base = transformers.LlamaForCausalLM.from_pretrained(llama_dir, attn_implementation="eager").eval()
  config = peft.PromptTuningConfig(task_type=peft.TaskType.CAUSAL_LM, num_virtual_tokens=PROMPT_LENGTH,
                                   token_dim=WIDTH, num_transformer_submodules=1)
  wrapped = peft.get_peft_model(base, config).eval()
  with torch.no_grad():
    wrapped.prompt_encoder["default"].embedding.weight.copy_(torch.from_numpy(prompt))
  return wrapped


def peft_outputs(model, ids: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, float]:
  """(logits of the input positions [B, L, V], the loss) of a PEFT model."""
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy((ids > 0).astype(np.int64)),
                labels=torch.from_numpy(labels))
  return out.logits[:, PROMPT_LENGTH:].numpy(), float(out.loss)


def ours(llama_dir, prompt: np.ndarray) -> tuple[DecoderOnlyModel, dict]:
  params, config = hf_llama.load_hf_llama(llama_dir)
  family = PromptFamily(lambda: prompts.PromptedInputs(prompts.Prompt(PROMPT_LENGTH)), trainable_regexes=[PROMPT_REGEX],
                        prompt_attention=CAUSAL_PROMPT)
  model = DecoderOnlyModel(DecoderOnly(config.replace(dtype=jnp.float32), family), z_loss=0.0,
                           loss_normalizing_factor="NUM_REAL_TARGET_TOKENS")
  params = {"decoder": {**params["decoder"], "prompt": {"prompt": {"prompt": jnp.asarray(prompt)}}}}
  return model, params


def assert_logits_match(got: np.ndarray, expected: np.ndarray, valid: np.ndarray) -> None:
  np.testing.assert_allclose(got[valid], expected[valid], rtol=1e-4, atol=1e-4 * np.abs(expected[valid]).max())


def test_peft_prompt_tuning_and_ours_give_the_same_logits_and_loss(llama_dir):
  prompt = np.random.default_rng(0).normal(size=(PROMPT_LENGTH, WIDTH)).astype(np.float32)
  ids, labels = hf_batch()
  their_logits, their_loss = peft_outputs(peft_model(llama_dir, prompt), ids, labels)
  model, params = ours(llama_dir, prompt)
  batch = our_batch(ids)
  logits = np.asarray(model.compute_logits(params, batch))
  assert_logits_match(logits, their_logits[:, :-1], batch["decoder_target_tokens"] > 0)
  loss, _ = model.loss_fn(params, batch, None)
  np.testing.assert_allclose(float(loss), their_loss, rtol=1e-5)


def test_trained_prompt_exports_to_an_adapter_peft_loads(llama_dir, tmp_path):
  """A few steps of prompt tuning (the prompt alone gets gradients), then export: PEFT reproduces our logits."""
  start = np.random.default_rng(1).uniform(-0.5, 0.5, size=(PROMPT_LENGTH, WIDTH)).astype(np.float32)
  model, params = ours(llama_dir, start)
  batch = our_batch(hf_batch()[0])
  trainable, frozen = optim.split_trainable(params, [PROMPT_REGEX])
  loss_of = jax.jit(lambda t: model.loss_fn(optim.merge_trainable(t, frozen), batch, None)[0])
  grads = jax.grad(loss_of)(trainable)  # taken with respect to the trainable split: the prompt alone
  assert list(grads["decoder"]) == ["prompt"] and len(jax.tree_util.tree_leaves(grads)) == 1
  assert np.abs(np.asarray(grads["decoder"]["prompt"]["prompt"]["prompt"])).min(axis=1).all()  # every row moves
  opt = optax.adam(0.05)
  state = opt.init(trainable)
  first = float(loss_of(trainable))
  for _ in range(5):
    updates, state = opt.update(jax.grad(loss_of)(trainable), state)
    trainable = optax.apply_updates(trainable, updates)
  assert float(loss_of(trainable)) < first
  trained = np.asarray(trainable["decoder"]["prompt"]["prompt"]["prompt"])
  assert not np.allclose(trained, start)
  adapter = peft_export.export_peft_prompt(trained, tmp_path / "adapter", str(llama_dir), task_type="CAUSAL_LM")
  base = transformers.LlamaForCausalLM.from_pretrained(llama_dir, attn_implementation="eager").eval()
  loaded = peft.PeftModel.from_pretrained(base, str(adapter)).eval()
  ids, labels = hf_batch()
  their_logits, _ = peft_outputs(loaded, ids, labels)
  logits = np.asarray(model.compute_logits(optim.merge_trainable(trainable, frozen), batch))
  assert_logits_match(logits, their_logits[:, :-1], batch["decoder_target_tokens"] > 0)
