"""Hugging Face T5 (PyTorch, CPU) and our T5 give the same float32 logits on the same weights.

Tolerance: `assert_allclose(rtol=1e-4, atol=1e-4 * max|HF logit|)` on every decoder position whose target is
not padding (padded targets are free in both models), for random inputs with padding.
"""
from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from prompt_tuning.family import PromptFamily
from prompt_tuning.models import EncoderDecoder
from prompt_tuning.runtime.checkpoints import hf

torch = pytest.importorskip("torch", reason="needs the hf extra: pip install 'prompt_tuning[hf]'")
transformers = pytest.importorskip("transformers", reason="needs the hf extra: pip install 'prompt_tuning[hf]'")

VOCAB = 64
T5_1_1_CONFIGS = {
    "d16_h2_k8_f32_2+2": dict(d_model=16, num_heads=2, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2,
                              relative_attention_num_buckets=32),
    "d24_h3_k4_f40_3+1": dict(d_model=24, num_heads=3, d_kv=4, d_ff=40, num_layers=3, num_decoder_layers=1,
                              relative_attention_num_buckets=8, relative_attention_max_distance=20),
}


def random_hf_t5(seed: int, feed_forward_proj: str = "gated-gelu", tie_word_embeddings: bool = False, **dims):
  """A randomly initialised `T5ForConditionalGeneration` in eval mode, norms and position biases randomised too."""
  torch.manual_seed(seed)
  config = transformers.T5Config(vocab_size=VOCAB, dropout_rate=0.0, feed_forward_proj=feed_forward_proj,
                                 tie_word_embeddings=tie_word_embeddings, decoder_start_token_id=0, **dims)
  model = transformers.T5ForConditionalGeneration(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.uniform_(0.5, 1.5)
      elif "relative_attention_bias" in name:
        p.normal_(0.0, 1.0)
  if not tie_word_embeddings:  # transformers >= 5 ties lm_head at construction even when asked not to
    model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, config.d_model) * config.d_model ** -0.5)
  return model


def random_batch(seed: int, batch: int = 3, input_length: int = 21, target_length: int = 7):
  """Encoder ids, decoder input ids (targets shifted right, 0 first) and targets, each padded with 0."""
  rng = np.random.default_rng(seed)

  def padded(length: int, lengths: list[int]) -> np.ndarray:
    ids = rng.integers(2, VOCAB, size=(batch, length))
    for row, n in enumerate(lengths):
      ids[row, n - 1] = 1  # EOS
      ids[row, n:] = 0
    return ids.astype(np.int32)

  inputs = padded(input_length, [input_length, input_length // 2, 3][:batch])
  targets = padded(target_length, [target_length - 2, target_length, 2][:batch])
  decoder_inputs = np.pad(targets, ((0, 0), (1, 0)))[:, :-1]
  return inputs, decoder_inputs, targets


def hf_logits(model, inputs: np.ndarray, decoder_inputs: np.ndarray, **kwargs) -> np.ndarray:
  ids = torch.from_numpy(inputs.astype(np.int64))
  with torch.no_grad():
    out = model(input_ids=ids, attention_mask=(ids > 0).long(),
                decoder_input_ids=torch.from_numpy(decoder_inputs.astype(np.int64)), **kwargs)
  return out.logits.numpy()


def our_logits(params, config, inputs, decoder_inputs, targets, prompt_factory=None) -> np.ndarray:
  model = EncoderDecoder(config.replace(dtype=jnp.float32), PromptFamily(prompt_factory))
  return np.asarray(jax.jit(model.apply)({"params": params}, inputs, decoder_inputs, targets))  # jit: faster on CPU


def assert_logits_match(ours: np.ndarray, theirs: np.ndarray, targets: np.ndarray) -> None:
  """Compare real (non-padding) target positions at rtol 1e-4, atol 1e-4 * the largest |logit|."""
  real = targets > 0
  np.testing.assert_allclose(ours[real], theirs[real], rtol=1e-4, atol=1e-4 * np.abs(theirs[real]).max())


@pytest.mark.parametrize("name", sorted(T5_1_1_CONFIGS))
def test_t5_1_1_logits_match_transformers(tmp_path, name):
  model = random_hf_t5(seed=len(name), **T5_1_1_CONFIGS[name])
  model.save_pretrained(tmp_path)
  params, config = hf.load_hf_t5(tmp_path)
  assert config.mlp_activations == ("gelu", "linear") and not config.logits_via_embedding
  assert params["decoder"]["logits_dense"]["kernel"].shape == (model.config.d_model, VOCAB)
  batch = random_batch(seed=1)
  assert_logits_match(our_logits(params, config, *batch), hf_logits(model, *batch[:2]), batch[2])


def test_t5_1_0_tied_relu_matches_transformers(tmp_path):
  """T5 1.0: one non-gated `wi`, and the head tied to the embedding with HF's d_model**-0.5 output scale."""
  model = random_hf_t5(seed=3, feed_forward_proj="relu", tie_word_embeddings=True, d_model=16, num_heads=2,
                       d_kv=8, d_ff=32, num_layers=2, relative_attention_num_buckets=16)
  model.save_pretrained(tmp_path)
  params, config = hf.load_hf_t5(tmp_path)
  assert config.mlp_activations == ("relu",) and config.logits_via_embedding
  assert "wi" in params["encoder"]["layers_0"]["mlp"] and "logits_dense" not in params["decoder"]
  batch = random_batch(seed=2)
  assert_logits_match(our_logits(params, config, *batch), hf_logits(model, *batch[:2]), batch[2])


def test_loading_does_not_import_torch(tmp_path):
  random_hf_t5(seed=8, **T5_1_1_CONFIGS["d16_h2_k8_f32_2+2"]).save_pretrained(tmp_path)
  code = (f"import sys; from prompt_tuning.runtime.checkpoints import hf; hf.load_hf_t5({str(tmp_path)!r}); "
          "assert 'torch' not in sys.modules, 'loading imported torch'")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120)
  assert result.returncode == 0, result.stderr


def test_sharded_checkpoint_loads_like_a_single_file(tmp_path):
  model = random_hf_t5(seed=4, **T5_1_1_CONFIGS["d16_h2_k8_f32_2+2"])
  model.save_pretrained(tmp_path / "one")
  model.save_pretrained(tmp_path / "sharded", max_shard_size="8KB")
  assert (tmp_path / "sharded" / hf.INDEX_FILE).exists() and not (tmp_path / "sharded" / hf.WEIGHTS_FILE).exists()
  one, _ = hf.load_hf_t5(tmp_path / "one")
  sharded, _ = hf.load_hf_t5(tmp_path / "sharded")
  assert_trees_equal(sharded, one)


def assert_trees_equal(got: dict, expected: dict) -> None:
  got, expected = traverse_util.flatten_dict(got, sep="/"), traverse_util.flatten_dict(expected, sep="/")
  assert got.keys() == expected.keys()
  for key, value in expected.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)


@pytest.mark.parametrize("tied", [False, True])
def test_save_hf_t5_is_read_by_transformers_and_round_trips(tmp_path, tied):
  """Our tree -> save_hf_t5 -> transformers gives our logits; load_hf_t5 gives back the same tree."""
  source = random_hf_t5(seed=5, tie_word_embeddings=tied, **T5_1_1_CONFIGS["d24_h3_k4_f40_3+1"])
  source.save_pretrained(tmp_path / "source")
  params, config = hf.load_hf_t5(tmp_path / "source")
  hf.save_hf_t5(params, config, tmp_path / "ours")
  assert json.loads((tmp_path / "ours" / hf.CONFIG_FILE).read_text())["tie_word_embeddings"] == tied
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
  batch = random_batch(seed=3)
  assert_logits_match(our_logits(params, config, *batch), hf_logits(reloaded, *batch[:2]), batch[2])
  again, config_again = hf.load_hf_t5(tmp_path / "ours")
  assert config_again == config
  assert_trees_equal(again, params)


def test_untied_scaled_head_folds_the_scale_into_logits_dense(tmp_path):
  """A stored lm_head unlike the embedding, with the output scale on, becomes a scaled logits_dense kernel."""
  model = random_hf_t5(seed=6, **T5_1_1_CONFIGS["d16_h2_k8_f32_2+2"])
  model.save_pretrained(tmp_path)
  config_file = tmp_path / hf.CONFIG_FILE
  hf_config = json.loads(config_file.read_text())
  hf.write_json(config_file, {**hf_config, "tie_word_embeddings": True, "scale_decoder_outputs": True})
  params, config = hf.load_hf_t5(tmp_path)
  assert not config.logits_via_embedding
  lm_head = model.lm_head.weight.detach().numpy()
  np.testing.assert_allclose(params["decoder"]["logits_dense"]["kernel"], lm_head.T * 16 ** -0.5, rtol=1e-6)


def test_tied_unscaled_head_becomes_logits_dense(tmp_path):
  """No lm_head and no output scale (a fresh transformers>=5 T5 1.1): logits_dense is the embedding, transposed."""
  random_hf_t5(seed=9, **T5_1_1_CONFIGS["d16_h2_k8_f32_2+2"]).save_pretrained(tmp_path)
  tensors = hf.read_safetensors(tmp_path)
  del tensors["lm_head.weight"]
  hf.write_safetensors(tmp_path / hf.WEIGHTS_FILE, tensors)
  hf_config = json.loads((tmp_path / hf.CONFIG_FILE).read_text())
  hf.write_json(tmp_path / hf.CONFIG_FILE, {**hf_config, "tie_word_embeddings": False, "scale_decoder_outputs": False})
  params, config = hf.load_hf_t5(tmp_path)
  assert not config.logits_via_embedding
  np.testing.assert_array_equal(params["decoder"]["logits_dense"]["kernel"], tensors["shared.weight"].T)


@pytest.mark.parametrize("change,message", [
    ({"feed_forward_proj": "gelu"}, "erf GELU"),
    ({"feed_forward_proj": "gated-tanh"}, "feed_forward_proj"),
    ({"model_type": "umt5"}, "umt5"),
    ({"layer_norm_epsilon": 1e-5}, "layer_norm_epsilon"),
])
def test_unsupported_configs_raise_clear_errors(change, message):
  base = dict(model_type="t5", vocab_size=VOCAB, d_model=16, num_heads=2, d_kv=8, d_ff=32, num_layers=2,
              feed_forward_proj="gated-gelu")
  with pytest.raises(ValueError, match=message):
    hf.t5_config_from_hf({**base, **change})


def test_missing_files_raise_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf.load_hf_t5(tmp_path)
  (tmp_path / hf.CONFIG_FILE).write_text("{}")
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    hf.load_hf_t5(tmp_path)
