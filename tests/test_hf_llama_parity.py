"""Hugging Face Llama (PyTorch, CPU) and our decoder-only model give the same float32 logits on the same weights.

Tolerance: `assert_allclose(rtol=1e-4, atol=1e-4 * max|HF logit|)` on every real (non-padding) position of
right-padded random inputs, as tests/test_hf_parity.py does for T5.
"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from prompt_tuning import prompts
from prompt_tuning.family import PromptFamily
from prompt_tuning.models import scan_utils
from prompt_tuning.models.decoder_only import DecoderOnly
from prompt_tuning.runtime.checkpoints import hf, hf_llama

torch = pytest.importorskip("torch", reason="needs the hf extra: pip install 'prompt_tuning[hf]'")
transformers = pytest.importorskip("transformers", reason="needs the hf extra: pip install 'prompt_tuning[hf]'")

VOCAB = 64
LLAMA_CONFIGS = {
    # Grouped-query attention (4 query heads share 2 key/value heads), tied embeddings, llama3 RoPE scaling.
    "gqa_tied_llama3": dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, tie_word_embeddings=True, rms_norm_eps=1e-5,
                            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0, "original_max_position_embeddings": 8}),
    # One key/value head per query head, an untied head, linear RoPE scaling, a wider head than hidden / heads.
    "mha_untied_linear": dict(hidden_size=24, intermediate_size=40, num_hidden_layers=3, num_attention_heads=3,
                              num_key_value_heads=3, head_dim=12, tie_word_embeddings=False, rope_theta=500.0,
                              rope_scaling={"rope_type": "linear", "factor": 2.0}),
}


def random_llama(seed: int, **dims):
  """A randomly initialised `LlamaForCausalLM` in eval mode with visible weights (norms randomised too)."""
  torch.manual_seed(seed)
  config = transformers.LlamaConfig(vocab_size=VOCAB, initializer_range=0.2, attn_implementation="eager", **dims)
  model = transformers.LlamaForCausalLM(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.uniform_(0.5, 1.5)
    if not config.tie_word_embeddings:  # make sure the head is its own tensor
      model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, config.hidden_size) * 0.2)
  return model


def random_ids(seed: int, lengths: tuple[int, ...] = (13, 7, 3), length: int = 13) -> np.ndarray:
  """BOS (1), random ids, then 0 padding: one row per length."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(2, VOCAB, size=(len(lengths), length)).astype(np.int32)
  ids[:, 0] = 1
  for row, n in enumerate(lengths):
    ids[row, n:] = 0
  return ids


def hf_logits(model, ids: np.ndarray, prompt: np.ndarray | None = None) -> np.ndarray:
  """HF logits; with `prompt` [P, d], the prompt's embeddings go before the inputs' (as PEFT prompt tuning)."""
  tokens = torch.from_numpy(ids.astype(np.int64))
  mask = (tokens > 0).long()
  with torch.no_grad():
    if prompt is None:
      return model(input_ids=tokens, attention_mask=mask).logits.numpy()
    embedded = model.get_input_embeddings()(tokens)
    virtual = torch.from_numpy(prompt).float()[None].expand(ids.shape[0], -1, -1)
    mask = torch.cat([torch.ones(ids.shape[0], prompt.shape[0], dtype=torch.long), mask], dim=1)
    logits = model(inputs_embeds=torch.cat([virtual, embedded], dim=1), attention_mask=mask).logits
    return logits[:, prompt.shape[0]:].numpy()


def our_logits(params, config, ids: np.ndarray, family: PromptFamily | None = None) -> np.ndarray:
  module = DecoderOnly(config.replace(dtype=jnp.float32), family)
  return np.asarray(jax.jit(module.apply)({"params": params}, ids, (ids > 0).astype(np.int32)))


def assert_logits_match(ours: np.ndarray, theirs: np.ndarray, ids: np.ndarray) -> None:
  real = ids > 0
  np.testing.assert_allclose(ours[real], theirs[real], rtol=1e-4, atol=1e-4 * np.abs(theirs[real]).max())


@pytest.mark.parametrize("name", sorted(LLAMA_CONFIGS))
def test_llama_logits_match_transformers_with_padding(tmp_path, name):
  model = random_llama(seed=len(name), **LLAMA_CONFIGS[name])
  model.save_pretrained(tmp_path)
  params, config = hf_llama.load_hf_llama(tmp_path)
  dims = LLAMA_CONFIGS[name]
  assert config.kv_heads == dims["num_key_value_heads"] and config.logits_via_embedding == dims["tie_word_embeddings"]
  assert ("logits_dense" in params["decoder"]) != dims["tie_word_embeddings"]
  ids = random_ids(seed=1)
  theirs = hf_logits(model, ids)
  assert np.abs(theirs).max() > 1.0  # weights large enough that a wrong op shows
  assert_logits_match(our_logits(params, config, ids), theirs, ids)


def test_rope_scaling_matters_and_scanned_layers_agree(tmp_path):
  """The llama3 scaling changes the logits (so the parity above tests it), and the scanned model gives the same."""
  model = random_llama(seed=2, **LLAMA_CONFIGS["gqa_tied_llama3"])
  model.save_pretrained(tmp_path)
  params, config = hf_llama.load_hf_llama(tmp_path)
  ids = random_ids(seed=2)
  ours = our_logits(params, config, ids)
  unscaled = our_logits(params, config.replace(rope_scaling=()), ids)
  assert np.abs(ours - unscaled)[ids > 0].max() > 1e-3
  scanned = our_logits(scan_utils.stack_layers(params), config.replace(scan_layers=True, remat_policy="minimal"), ids)
  np.testing.assert_allclose(scanned, ours, rtol=1e-5, atol=1e-5)


def test_prompt_before_the_inputs_matches_transformers_inputs_embeds(tmp_path):
  """Our prompted model (prompt first) equals HF fed the prompt's embeddings before the inputs' embeddings.

  HF's mask is causal over the prompt too, so the prompt positions read earlier ones only
  (PROMPT_ATTENTION=['prompt->input', 'prompt->prompt;causal']); by default they would all see each other.
  """
  model = random_llama(seed=3, **LLAMA_CONFIGS["gqa_tied_llama3"])
  model.save_pretrained(tmp_path)
  params, config = hf_llama.load_hf_llama(tmp_path)
  prompt = np.random.default_rng(0).normal(size=(4, 32)).astype(np.float32)
  family = PromptFamily(lambda: prompts.PromptedInputs(prompts.Prompt(4, initializer=prompts.from_array(prompt))),
                        prompt_attention=["input->input", "input->prompt", "prompt->input", "prompt->prompt;causal"])
  params = {"decoder": {**params["decoder"], "prompt": {"prompt": {"prompt": prompt}}}}
  ids = random_ids(seed=3)
  theirs = hf_logits(model, ids, prompt)
  assert_logits_match(our_logits(params, config, ids, family), theirs, ids)
  assert np.abs(our_logits(params, config, ids, family.replace(prompt_attention=None)) - theirs)[ids > 0].max() > 1e-3


def test_sharded_checkpoint_loads_like_a_single_file(tmp_path):
  model = random_llama(seed=4, **LLAMA_CONFIGS["mha_untied_linear"])
  model.save_pretrained(tmp_path / "one")
  model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
  assert (tmp_path / "sharded" / hf.INDEX_FILE).exists() and not (tmp_path / "sharded" / hf.WEIGHTS_FILE).exists()
  one, config = hf_llama.load_hf_llama(tmp_path / "one")
  sharded, config_sharded = hf_llama.load_hf_llama(tmp_path / "sharded")
  assert config_sharded == config
  flat_one, flat_sharded = (traverse_util.flatten_dict(t, sep="/") for t in (one, sharded))
  assert flat_one.keys() == flat_sharded.keys()
  for key, value in flat_one.items():
    np.testing.assert_array_equal(flat_sharded[key], value, err_msg=key)


def test_config_conversion_reads_old_and_new_rope_fields():
  base = dict(model_type="llama", vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
              num_attention_heads=2)
  old = hf_llama.decoder_only_config_from_hf({**base, "rope_theta": 5e5, "rope_scaling": {
      "type": "linear", "factor": 4.0}})
  new = hf_llama.decoder_only_config_from_hf({**base, "rope_parameters": {"rope_type": "linear", "factor": 4.0,
                                                                          "rope_theta": 5e5}})
  assert old == new and old.rope_theta == 5e5 and dict(old.rope_scaling) == {"rope_type": "linear", "factor": 4.0}
  plain = hf_llama.decoder_only_config_from_hf(base)
  assert plain.rope_scaling == () and plain.kv_heads == 2 and plain.head_dim == 8


@pytest.mark.parametrize("change,message", [
    ({"model_type": "qwen2"}, "model_type='qwen2'"),
    ({"attention_bias": True}, "attention_bias=True"),
    ({"mlp_bias": True}, "mlp_bias=True"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"sliding_window": 4096}, "sliding_window=4096"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "rope_type='yarn'"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 2.0}}, "low_freq_factor"),
    ({"num_key_value_heads": 3}, "must divide num_heads"),
])
def test_unsupported_config_fields_raise_clear_errors(change, message):
  base = dict(model_type="llama", vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
              num_attention_heads=2, hidden_act="silu")
  with pytest.raises(ValueError, match=message):
    hf_llama.decoder_only_config_from_hf({**base, **change})


def test_missing_files_and_wrong_heads_raise_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf_llama.load_hf_llama(tmp_path)
  model = random_llama(seed=5, **LLAMA_CONFIGS["mha_untied_linear"])
  model.save_pretrained(tmp_path)
  config_file = tmp_path / hf.CONFIG_FILE
  hf.write_json(config_file, {**json.loads(config_file.read_text()), "tie_word_embeddings": True})
  with pytest.raises(ValueError, match="lm_head.weight differs"):
    hf_llama.load_hf_llama(tmp_path)
