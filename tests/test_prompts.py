"""Prompt initialisers, combinations with the embedded input, and prompt-aware masks."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import prompts
from prompt_tuning.family import PromptFamily
from prompt_tuning.models import EncoderDecoder, get_config

KEY = jax.random.PRNGKey(0)
TABLE = np.arange(40, dtype=np.float32).reshape(10, 4)


class FakeVocab:
  """Words map to fixed ids; unknown words are split into one id per character (multi-piece labels)."""

  WORDS = {"positive": [3], "negative": [4, 5], "hello": [6], "world": [7]}

  def encode(self, text):
    return [i for w in text.split() for i in self.WORDS.get(w, [8] * len(w))]


def test_random_uniform_symmetric_by_default_and_reference_range_as_option():
  sym = np.asarray(prompts.random_uniform(0.5)(KEY, (2000, 4)))
  assert sym.min() < -0.45 and sym.max() > 0.45 and np.all(np.abs(sym) <= 0.5)
  ref = np.asarray(prompts.random_uniform(0.5, symmetric=False)(KEY, (2000, 4)))
  assert ref.min() >= 0.0 and ref.max() < 0.5


def test_sampled_vocab_without_replacement_from_the_population():
  out = np.asarray(prompts.from_sampled_vocab(TABLE, population_size=6)(KEY, (6, 4)))
  rows = sorted(int(r[0]) // 4 for r in out)
  assert rows == list(range(6))  # all six population rows, each once
  wide = np.asarray(prompts.from_sampled_vocab(TABLE, population_size=3)(KEY, (8, 4)))
  assert {int(r[0]) // 4 for r in wide} <= {0, 1, 2}  # P > population: with replacement
  with pytest.raises(ValueError, match="population_size=0"):
    prompts.from_sampled_vocab(TABLE, population_size=0)(KEY, (2, 4))
  with pytest.raises(ValueError, match=r"\(10, 4\).*model width 8"):
    prompts.from_sampled_vocab(TABLE)(KEY, (2, 8))


def test_class_labels_use_the_mean_of_each_labels_subtokens():
  init = prompts.from_class_labels(TABLE, FakeVocab(), ["positive", "negative"],
                                   initializer=lambda k, s, d=jnp.float32: jnp.full(s, -1.0, d))
  out = np.asarray(jax.jit(lambda k: init(k, (4, 4)))(KEY))  # traceable: initialisers run under jit
  np.testing.assert_array_equal(out[0], TABLE[3])
  np.testing.assert_array_equal(out[1], TABLE[[4, 5]].mean(0))
  np.testing.assert_array_equal(out[2:], -1.0)
  many = prompts.from_class_labels(TABLE, FakeVocab(), ["positive", "negative", "hello"])(KEY, (2, 4))
  assert many.shape == (2, 4)  # labels past the prompt length are skipped


def test_string_init_takes_the_texts_token_embeddings_then_the_fallback():
  fill = lambda k, s, d=jnp.float32: jnp.zeros(s, d)
  out = np.asarray(prompts.from_string(TABLE, FakeVocab(), "hello world", initializer=fill)(KEY, (3, 4)))
  np.testing.assert_array_equal(out[:2], TABLE[[6, 7]])
  np.testing.assert_array_equal(out[2], 0.0)
  short = np.asarray(prompts.from_string(TABLE, FakeVocab(), "hello world", initializer=fill)(KEY, (1, 4)))
  np.testing.assert_array_equal(short, TABLE[[6]])


def test_from_file_and_wrong_shape(tmp_path):
  arr = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
  np.save(tmp_path / "p.npy", arr)
  got = prompts.from_array(prompts.np_load(str(tmp_path / "p.npy")))(KEY, (5, 4))
  np.testing.assert_array_equal(np.asarray(got), arr)
  with pytest.raises(ValueError, match=r"\(5, 4\) does not fit a prompt of shape \(6, 4\).*PROMPT_LENGTH=5"):
    prompts.from_array(arr)(KEY, (6, 4))
  with pytest.raises(FileNotFoundError, match="PROMPT_FILE"):
    prompts.np_load(str(tmp_path / "missing.npy"))()


def test_files_are_read_once_until_rewritten(tmp_path, monkeypatch):
  path = tmp_path / "table.npy"
  np.save(path, TABLE)
  reads = []
  real_load = np.load
  monkeypatch.setattr(np, "load", lambda f: reads.append(f) or real_load(f))
  for _ in range(3):  # e.g. gin builds a new loader each time the model is built and traced
    np.testing.assert_array_equal(prompts.np_load(str(path))(), TABLE)
  assert len(reads) == 1
  with pytest.raises(ValueError, match="read-only"):
    prompts.np_load(str(path))()[0, 0] = 1.0
  np.save(path, TABLE[:5] * 2)  # rewritten: read again
  np.testing.assert_array_equal(prompts.np_load(str(path))(), TABLE[:5] * 2)
  assert len(reads) == 2


def test_released_prompt_file_loads(shared_data):
  arr = prompts.np_load(str(shared_data / "released_prompts" / "t5_1_1_lm100k_base" / "sst2.npy"))()
  assert arr.shape == (100, 768) and arr.dtype == np.float32
  np.testing.assert_array_equal(np.asarray(prompts.from_array(arr)(KEY, (100, 768))), arr)


def test_variable_from_a_t5x_checkpoint(tiny_t5x_checkpoint, shared_data):
  emb = prompts.t5x_load(str(tiny_t5x_checkpoint), "token_embedder/embedding")()
  table = shared_data / "t5x_tiny_checkpoint" / "token_embedder_embedding_32128x4.npy"
  np.testing.assert_array_equal(emb, np.load(table))


TOKENS = jnp.array([[5, 6, 7, 1, 0, 0], [8, 1, 0, 0, 0, 0]])


def combined(combination: str):
  x = jnp.asarray(TOKENS, jnp.float32)[..., None] * jnp.ones((1, 1, 2))
  p = -jnp.ones((2, 2, 2)) * jnp.arange(1, 3)[None, :, None]  # prompt rows -1, -2
  return np.asarray(prompts.COMBINATIONS[combination](p, x, TOKENS)[..., 0])


def test_combinations():
  np.testing.assert_array_equal(combined("prefix")[0], [-1, -2, 5, 6, 7, 1, 0, 0])
  np.testing.assert_array_equal(combined("prefix_after_bos")[0], [5, -1, -2, 6, 7, 1, 0, 0])
  suffix = combined("suffix_before_eos")
  np.testing.assert_array_equal(suffix[0], [5, 6, 7, -1, -2, 1, 0, 0])  # after the last real token, before EOS
  np.testing.assert_array_equal(suffix[1], [8, -1, -2, 1, 0, 0, 0, 0])  # padding moves to the end


@pytest.mark.parametrize("combination", ["prefix", "prefix_after_bos", "suffix_before_eos"])
def test_mask_tokens_mark_prompt_positions_as_real(combination):
  module = prompts.PromptedInputs(prompts.Prompt(2), combination)
  mask_tokens = np.asarray(module.combine_tokens(TOKENS))
  assert mask_tokens.shape == (2, 8)
  assert (mask_tokens > 0).sum(1).tolist() == [6, 4]  # 4 and 2 real tokens + 2 prompt positions each


def test_prompted_model_masks_padding_but_sees_the_prompt():
  cfg = get_config("tiny", dtype=jnp.float32)
  model = EncoderDecoder(cfg, PromptFamily(lambda: prompts.PromptedInputs(prompts.Prompt(3))))
  dec = jnp.array([[0, 3], [0, 4]])
  tgt = jnp.array([[3, 1], [4, 1]])
  variables = model.init(KEY, TOKENS, dec, tgt)
  params = nn.meta.unbox(variables["params"])
  encoded = model.apply({"params": params}, TOKENS, method=model.encode)
  assert encoded.shape == (2, 3 + 6, 4)
  np.testing.assert_array_equal(np.asarray(encoded[1, 3 + 2:]), 0.0)  # padded positions are zeroed
  logits = model.apply({"params": params}, TOKENS, dec, tgt)
  other_prompt = jax.tree_util.tree_map(lambda x: x, params)
  other_prompt["encoder"]["prompt"]["prompt"]["prompt"] = params["encoder"]["prompt"]["prompt"]["prompt"] + 1.0
  assert not np.allclose(model.apply({"params": other_prompt}, TOKENS, dec, tgt), logits)  # the prompt is seen
  more_padding = model.apply({"params": params}, jnp.pad(TOKENS, ((0, 0), (0, 3))), dec, tgt)
  np.testing.assert_allclose(more_padding, logits, rtol=1e-5, atol=1e-5)  # padding is not


def test_unknown_combination_is_rejected():
  with pytest.raises(ValueError, match="Unknown prompt combination 'middle'"):
    prompts.PromptedInputs(prompts.Prompt(2), "middle")
