"""Deep prompts: per-layer prompts (replace / add) and prefix tuning (direct, reparameterised, exported)."""
from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from prompt_tuning import prompts
from prompt_tuning.families import count, deep
from prompt_tuning.family import PromptFamily
from prompt_tuning.models import EncoderDecoder
from prompt_tuning.models.layers import prepend_prefix
from prompt_tuning.models.scan_utils import stack_layers
from prompt_tuning.models.t5 import apply_layer_prompt

from test_families_utils import BATCH, assert_trains_only_family, config, init, logits
from test_t5_model import _decode_step_by_step

P = 3
LAYER_REGEXES = [".*/prompt/.*", ".*/layer_prompts/.*"]  # families/layer_prompts.gin
PREFIX_REGEXES = [".*/prefix/.*"]  # families/prefix.gin


def input_prompt(combination: str = "prefix"):
  return lambda: prompts.PromptedInputs(prompts.Prompt(P), combination)


def family(prompt=None, layer_prompts=None, prefix=None) -> PromptFamily:
  """A family with an input prompt and the given per-stack hooks (as families/*.gin build it)."""
  hooks = {name: make for name, make in (("layer_prompts", layer_prompts), ("prefix", prefix)) if make}
  return PromptFamily(prompt, stack_hooks=hooks)


def layer_model(mode: str = "replace", layers: int = 3, **kw) -> EncoderDecoder:
  return EncoderDecoder(config(num_encoder_layers=layers, **kw),
                        family(input_prompt(), functools.partial(deep.LayerPrompts, P, mode)))


def prefix_model(hidden_dim: int = 0, **kw) -> EncoderDecoder:
  prefix_kw = {k: kw.pop(k) for k in ("attentions", "exported_dir") if k in kw}
  return EncoderDecoder(config(**kw), family(prefix=functools.partial(deep.PrefixTuning, P, hidden_dim, **prefix_kw)))


def test_apply_layer_prompt_replaces_or_adds_the_first_positions():
  x = jnp.arange(2 * 5 * 2, dtype=jnp.float32).reshape(2, 5, 2)
  prompt = jnp.full((3, 2), 100.0)
  replaced = apply_layer_prompt(x, jnp.float32(0.0), prompt)
  added = apply_layer_prompt(x, jnp.float32(1.0), prompt)
  np.testing.assert_array_equal(replaced[:, :3], 100.0)
  np.testing.assert_array_equal(added[:, :3], x[:, :3] + 100.0)
  np.testing.assert_array_equal(replaced[:, 3:], x[:, 3:])
  np.testing.assert_array_equal(added[:, 3:], x[:, 3:])


def test_layer_prompt_parameters_and_count():
  module = layer_model(layers=3)
  params = init(module)
  assert params["encoder"]["layer_prompts"]["prompt"].shape == (2, P, 16)  # layers 1 and 2; layer 0: input prompt
  trainable, total = count.parameter_counts(module, LAYER_REGEXES)
  assert trainable == 3 * P * 16
  assert total - trainable == count.parameter_counts(count.without_prompts(module), [".*"])[1]


def test_add_mode_starts_as_plain_prompt_tuning_and_replace_does_not():
  plain = EncoderDecoder(config(num_encoder_layers=3), family(input_prompt()))
  add, replace = layer_model("add"), layer_model("replace")
  params = init(add)
  assert not np.any(params["encoder"]["layer_prompts"]["prompt"])  # "add" starts at zero
  np.testing.assert_array_equal(logits(add, params), logits(plain, params))
  assert not np.allclose(logits(replace, init(replace)), logits(plain, params), atol=1e-4)


def test_layer_prompts_need_a_prefix_input_prompt_of_the_same_length():
  cfg = config()
  no_prompt = EncoderDecoder(cfg, family(layer_prompts=functools.partial(deep.LayerPrompts, P)))
  with pytest.raises(ValueError, match="need an input prompt"):
    init(no_prompt)
  suffix = EncoderDecoder(cfg, family(input_prompt("suffix_before_eos"), functools.partial(deep.LayerPrompts, P)))
  with pytest.raises(ValueError, match="combination 'prefix'"):
    init(suffix)
  other = EncoderDecoder(cfg, family(input_prompt(), functools.partial(deep.LayerPrompts, P + 1)))
  with pytest.raises(ValueError, match="length 4 differs from the input prompt length 3"):
    init(other)
  with pytest.raises(ValueError, match="Unknown layer prompt mode 'swap'"):
    deep.LayerPrompts(P, "swap")


def test_prepend_prefix_makes_prefixes_visible_without_position_bias():
  k = v = jnp.ones((2, 4, 2, 3))
  mask = jnp.zeros((2, 1, 4, 4), bool)
  bias = jnp.full((1, 2, 4, 4), 7.0)
  pk = jnp.zeros((5, 2, 3))
  k2, v2, mask2, bias2 = prepend_prefix((pk, pk + 1), k, v, mask, bias)
  assert k2.shape == v2.shape == (2, 9, 2, 3) and mask2.shape == (2, 1, 4, 9) and bias2.shape == (1, 2, 4, 9)
  assert np.all(mask2[..., :5]) and not np.any(mask2[..., 5:])
  assert np.all(bias2[..., :5] == 0.0) and np.all(bias2[..., 5:] == 7.0)
  np.testing.assert_array_equal(v2[:, :5], 1.0)


@pytest.mark.parametrize("hidden_dim", [0, 6])
def test_prefix_parameters_and_count(hidden_dim):
  module = prefix_model(hidden_dim)
  flat = traverse_util.flatten_dict(init(module), sep="/")
  l, hd = 2, 16
  if hidden_dim == 0:
    for name in ("encoder/prefix/attention", "decoder/prefix/self_attention",
                 "decoder/prefix/encoder_decoder_attention"):
      assert flat[name].shape == (l, 2, P, hd)
    expected = 3 * l * 2 * P * hd
  else:
    assert flat["encoder/prefix/attention_embedding"].shape == (P, 16)
    expected = 3 * (P * 16 + 16 * 6 + 6 + 6 * (l * 2 * hd) + l * 2 * hd)
  assert count.parameter_counts(module, PREFIX_REGEXES)[0] == expected


def test_prefix_on_chosen_attentions_only():
  module = prefix_model(attentions=("encoder_decoder_attention",))
  params = init(module)
  assert "prefix" not in params["encoder"]
  assert set(params["decoder"]["prefix"]) == {"encoder_decoder_attention"}
  with pytest.raises(ValueError, match="unknown names \\['cross'\\]"):
    deep.PrefixTuning(P, attentions=("cross",))


@pytest.mark.parametrize("make", [lambda: layer_model("replace"), lambda: prefix_model(6)],
                         ids=["layer_prompts", "prefix"])
def test_padding_stays_masked(make):
  module = make()
  params = init(module)
  longer = dict(BATCH, encoder_input_tokens=jnp.pad(BATCH["encoder_input_tokens"], ((0, 0), (0, 4))))
  real = np.asarray(BATCH["decoder_target_tokens"] > 0)
  np.testing.assert_allclose(logits(module, params, longer)[real], logits(module, params)[real], atol=1e-5)


@pytest.mark.parametrize("stored_kv", [False, True])
def test_prefix_decoding_with_the_kv_cache_matches_full_sequence_logits(stored_kv):
  """`stored_kv`: cross-attention's keys and values (the prefix included) computed once, as predict_batch does."""
  module = prefix_model(6)
  params = init(module)
  enc, dec_in = BATCH["encoder_input_tokens"], BATCH["decoder_input_tokens"]
  full = logits(module, params)
  stepped = np.asarray(_decode_step_by_step(module, params, enc, dec_in, stored_kv))
  for i in range(dec_in.shape[1]):
    real = np.asarray(BATCH["decoder_target_tokens"][:, i] > 0)  # fully masked rows differ by design
    np.testing.assert_allclose(stepped[real, i], full[real, i], atol=1e-5, rtol=1e-5)
  # The decoder's prefixes matter: without them the logits differ.
  no_decoder_prefix = prefix_model(6, attentions=("attention",))
  assert not np.allclose(logits(no_decoder_prefix, params), full, atol=1e-4)


def test_exported_prefixes_serve_the_reparameterised_model_without_the_mlp(tmp_path):
  module = prefix_model(6)
  params = init(module, seed=1)
  paths = deep.export_final_prefixes(module, params, str(tmp_path))
  assert sorted(paths) == ["attention", "encoder_decoder_attention", "self_attention"]
  assert np.load(paths["attention"]).shape == (2, 2, P, 16)
  served = prefix_model(0, exported_dir=str(tmp_path))
  served_params = init(served, seed=1)  # the same frozen weights (flax derives them from their paths)
  np.testing.assert_array_equal(served_params["encoder"]["prefix"]["attention"], np.load(paths["attention"]))
  np.testing.assert_allclose(logits(served, served_params), logits(module, params), atol=1e-5, rtol=1e-5)
  with pytest.raises(ValueError, match="hidden_dim=0 with exported_dir"):
    deep.PrefixTuning(P, hidden_dim=6, exported_dir=str(tmp_path))


def test_scanned_layers_match_unrolled_with_layer_prompts_and_prefixes():
  def make(scan):
    return EncoderDecoder(config(scan_layers=scan), family(
        input_prompt(), functools.partial(deep.LayerPrompts, P, "add", prompts.random_uniform(0.5)),
        functools.partial(deep.PrefixTuning, P, 6)))
  unrolled = make(False)
  params = init(unrolled)
  np.testing.assert_allclose(logits(make(True), stack_layers(params)), logits(unrolled, params), atol=1e-5)


def test_layer_prompts_train_alone():
  assert_trains_only_family(layer_model("replace"), LAYER_REGEXES)


def test_reparameterised_prefixes_train_alone():  # direct prefixes: test_families_cli
  assert_trains_only_family(prefix_model(6), PREFIX_REGEXES, lr=0.02)
