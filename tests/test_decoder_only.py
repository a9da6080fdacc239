"""The decoder-only model: Flaxformer's tree, prefix-LM masks with a prompt, target-only loss, KV-cache decoding."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from flax.core import meta

from prompt_tuning import prompts
from prompt_tuning.family import PROMPT_REGEX, PromptFamily
from prompt_tuning.models import scan_utils
from prompt_tuning.models.config import DecoderOnlyConfig
from prompt_tuning.models.decoder_only import DecoderOnly
from prompt_tuning.runtime import decoding, optim, partitioning
from prompt_tuning.runtime.models import DecoderOnlyModel

VOCAB = 32
RELATIVE = DecoderOnlyConfig(vocab_size=VOCAB, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=16, num_layers=2,
                             relpos_num_buckets=8, relpos_max_distance=16, dtype=jnp.float32)
ROTARY = RELATIVE.replace(position_embedding="rotary", num_heads=4, num_kv_heads=2, scale_attention_logits=True,
                          mlp_activations=("silu", "linear"), logits_via_embedding=True, tied_logits_scaled=False,
                          rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 2.0, "original_max_position_embeddings": 8})
CONFIGS = {"relative": RELATIVE, "rotary_gqa_tied": ROTARY}


def family(length: int = 3, combination: str = "prefix", **kwargs) -> PromptFamily:
  return PromptFamily(lambda: prompts.PromptedInputs(prompts.Prompt(length), combination),
                      trainable_regexes=[PROMPT_REGEX], **kwargs)


def lm_batch() -> dict[str, np.ndarray]:
  """Language-model features (seqio.DecoderFeatureConverter without inputs): two rows, the second padded."""
  targets = np.array([[5, 6, 7, 8, 9, 10, 1, 0], [9, 4, 1, 0, 0, 0, 0, 0]], np.int32)
  return {"decoder_target_tokens": targets, "decoder_input_tokens": np.pad(targets, ((0, 0), (1, 0)))[:, :-1],
          "decoder_loss_weights": (targets > 0).astype(np.int32)}


def prefix_lm_batch() -> dict[str, np.ndarray]:
  """Prefix-LM features (seqio.PrefixLMFeatureConverter): inputs [a, b, 1] / [a, b, c, d, 1], then targets."""
  targets = np.array([[11, 12, 1, 13, 14, 1, 0, 0], [3, 4, 5, 6, 1, 7, 1, 0]], np.int32)
  causal = np.array([[1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0]], np.int32)
  weights = np.array([[0, 0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1, 1, 0]], np.int32)
  return {"decoder_target_tokens": targets, "decoder_input_tokens": np.pad(targets, ((0, 0), (1, 0)))[:, :-1],
          "decoder_loss_weights": weights, "decoder_causal_attention": causal}


BATCHES = {"lm": lm_batch, "prefix_lm": prefix_lm_batch}


def unboxed(module: DecoderOnly, batch: dict[str, np.ndarray], seed: int = 0) -> dict:
  """Plain (unboxed) parameters for `batch`'s shapes."""
  return meta.unbox(module.init(jax.random.PRNGKey(seed), batch["decoder_input_tokens"],
                                batch["decoder_target_tokens"], batch.get("decoder_causal_attention"))["params"])


def full_logits(module: DecoderOnly, params: dict, batch: dict[str, np.ndarray]) -> np.ndarray:
  return np.asarray(module.apply({"params": params}, batch["decoder_input_tokens"], batch["decoder_target_tokens"],
                                 batch.get("decoder_causal_attention")))


def stepwise_logits(model: DecoderOnlyModel, params: dict, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
  """Prefill the prompt and the inputs, then feed each row's tokens one by one from its first target position.

  Returns (logits [B, L, V] at the fed positions, zeros elsewhere; [B, L] which positions were fed).
  """
  cache, _, lengths = model.prefill_cache(params, batch)
  tokens = batch["decoder_input_tokens"]
  rows, length = tokens.shape
  lengths = np.asarray(lengths)
  out = np.zeros((rows, length, VOCAB), np.float32)
  fed = np.zeros((rows, length), bool)
  step = jax.jit(lambda cache, token: model.module.apply({"params": params, "cache": cache}, token, token,
                                                        decode=True, max_decode_length=length, mutable=["cache"]))
  for s in range(length - int(lengths.min())):
    index = np.minimum(lengths + s, length - 1)
    logits, mutated = step(cache, tokens[np.arange(rows), index][:, None])
    cache = mutated["cache"]
    for r in range(rows):
      if lengths[r] + s < length:
        out[r, index[r]], fed[r, index[r]] = np.asarray(logits[r, 0]), True
  return out, fed


def test_parameters_have_flaxformer_decoder_only_names_and_axes():
  module = DecoderOnly(ROTARY.replace(logits_via_embedding=False), family(3))
  variables = module.init(jax.random.PRNGKey(0), *[lm_batch()[k] for k in ("decoder_input_tokens",
                                                                           "decoder_target_tokens")])
  flat = traverse_util.flatten_dict(variables["params"], sep="/")
  layer = {"pre_self_attention_layer_norm/scale": (("embed",), (8,)),
           "self_attention/query/kernel": (("embed", "joined_kv"), (8, 16)),
           "self_attention/key/kernel": (("embed", "joined_kv"), (8, 8)),  # 2 key/value heads of 4
           "self_attention/value/kernel": (("embed", "joined_kv"), (8, 8)),
           "self_attention/out/kernel": (("joined_kv", "embed"), (16, 8)),
           "pre_mlp_layer_norm/scale": (("embed",), (8,)),
           "mlp/wi_0/kernel": (("embed", "mlp"), (8, 16)), "mlp/wi_1/kernel": (("embed", "mlp"), (8, 16)),
           "mlp/wo/kernel": (("mlp", "embed"), (16, 8))}
  expected = {"decoder/token_embedder/embedding": (("vocab", "embed"), (VOCAB, 8)),
              "decoder/prompt/prompt/prompt": (("prompt", "prompt_embed"), (3, 8)),
              "decoder/decoder_norm/scale": (("embed",), (8,)),
              "decoder/logits_dense/kernel": (("embed", "vocab"), (8, VOCAB)),
              **{f"decoder/layers_{i}/{k}": v for i in range(2) for k, v in layer.items()}}
  assert {k: (tuple(v.names), v.value.shape) for k, v in flat.items()} == expected
  relative = traverse_util.flatten_dict(DecoderOnly(RELATIVE).init(jax.random.PRNGKey(0), *[
      lm_batch()[k] for k in ("decoder_input_tokens", "decoder_target_tokens")])["params"], sep="/")
  assert relative["decoder/relpos_bias/rel_embedding"].names == ("heads", "relpos_buckets")
  assert "decoder/prompt/prompt/prompt" not in relative


def mask_of(module: DecoderOnly, batch: dict[str, np.ndarray]) -> np.ndarray:
  params = unboxed(module, batch)
  mask = module.apply({"params": params}, batch["decoder_target_tokens"], batch.get("decoder_causal_attention"),
                      method=module.attention_mask)
  return np.asarray(mask)[:, 0].astype(int)


def test_prefix_lm_mask_with_a_prompt_position_by_position():
  """Prompt p0 p1, then BOS + inputs x0..x3 (bidirectional with the prompt), target x4, padding x5."""
  batch = {"decoder_target_tokens": np.array([[11, 12, 1, 13, 1, 0]], np.int32),
           "decoder_input_tokens": np.array([[0, 11, 12, 1, 13, 1]], np.int32),
           "decoder_causal_attention": np.array([[1, 1, 1, 1, 0, 0]], np.int32)}
  #                   p0 p1 x0 x1 x2 x3 x4 x5
  expected = np.array([[1, 1, 1, 1, 1, 1, 0, 0],  # p0
                       [1, 1, 1, 1, 1, 1, 0, 0],  # p1
                       [1, 1, 1, 1, 1, 1, 0, 0],  # x0 (BOS slot)
                       [1, 1, 1, 1, 1, 1, 0, 0],  # x1
                       [1, 1, 1, 1, 1, 1, 0, 0],  # x2
                       [1, 1, 1, 1, 1, 1, 0, 0],  # x3 (last input: predicts the first target)
                       [1, 1, 1, 1, 1, 1, 1, 0],  # x4 (target): causal
                       [0, 0, 0, 0, 0, 0, 0, 0]])  # x5 (padding)
  np.testing.assert_array_equal(mask_of(DecoderOnly(RELATIVE, family(2)), batch)[0], expected)


def test_lm_mask_with_a_prompt_position_by_position():
  """Plain LM: the prompt sees itself whole, everything later sees it and the earlier positions."""
  batch = {"decoder_target_tokens": np.array([[11, 1, 0]], np.int32),
           "decoder_input_tokens": np.array([[0, 11, 1]], np.int32)}
  #                   p0 p1 x0 x1 x2
  expected = np.array([[1, 1, 0, 0, 0],
                       [1, 1, 0, 0, 0],
                       [1, 1, 1, 0, 0],
                       [1, 1, 1, 1, 0],
                       [0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(mask_of(DecoderOnly(RELATIVE, family(2)), batch)[0], expected)


def test_prompt_after_bos_with_causal_prompt_attention_position_by_position():
  """`prefix_after_bos` and PROMPT_ATTENTION=['prompt->prompt;causal']: the prompt reads only earlier prompt rows
  (not the BOS slot before it), and is read by every later position."""
  batch = {"decoder_target_tokens": np.array([[11, 12, 1, 0]], np.int32),
           "decoder_input_tokens": np.array([[0, 11, 12, 1]], np.int32)}
  module = DecoderOnly(RELATIVE, family(2, "prefix_after_bos", prompt_attention=["prompt->prompt;causal"]))
  #                   x0 p0 p1 x1 x2 x3
  expected = np.array([[1, 0, 0, 0, 0, 0],
                       [0, 1, 0, 0, 0, 0],
                       [0, 1, 1, 0, 0, 0],
                       [1, 1, 1, 1, 0, 0],
                       [1, 1, 1, 1, 1, 0],
                       [0, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(mask_of(module, batch)[0], expected)


def test_prefix_lm_inputs_see_later_inputs_and_targets_stay_causal():
  module = DecoderOnly(RELATIVE, family(2))
  batch = prefix_lm_batch()
  params = unboxed(module, batch)
  base = full_logits(module, params, batch)
  changed_input = {**batch, "decoder_input_tokens": batch["decoder_input_tokens"].copy()}
  changed_input["decoder_input_tokens"][0, 3] = 20  # the last input of row 0
  assert not np.allclose(full_logits(module, params, changed_input)[0, 1], base[0, 1])  # an earlier input sees it
  changed_target = {**batch, "decoder_input_tokens": batch["decoder_input_tokens"].copy()}
  changed_target["decoder_input_tokens"][0, 4] = 20  # the first target of row 0, fed at position 4
  after = full_logits(module, params, changed_target)
  np.testing.assert_array_equal(after[:, :4], base[:, :4])
  assert not np.allclose(after[0, 4], base[0, 4])


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
@pytest.mark.parametrize("combination", ["prefix", "prefix_after_bos"])
@pytest.mark.parametrize("batch_name", sorted(BATCHES))
def test_stepwise_decoding_with_the_prompt_equals_the_full_pass(config_name, combination, batch_name):
  module = DecoderOnly(CONFIGS[config_name], family(3, combination))
  batch = BATCHES[batch_name]()
  params = unboxed(module, batch, seed=1)
  expected = full_logits(module, params, batch)
  got, fed = stepwise_logits(DecoderOnlyModel(module), params, batch)
  real = fed & (batch["decoder_target_tokens"] > 0)
  assert real.sum() >= 5
  np.testing.assert_allclose(got[real], expected[real], rtol=1e-5, atol=1e-5)


def test_scanned_rematerialised_model_equals_the_unrolled_one_and_decodes_alike():
  config = CONFIGS["rotary_gqa_tied"]
  module = DecoderOnly(config, family(3))
  scanned = DecoderOnly(config.replace(scan_layers=True, remat_policy="full"), family(3))
  batch = prefix_lm_batch()
  params = unboxed(module, batch, seed=2)
  stacked = scan_utils.stack_layers(params)
  assert jax.tree_util.tree_structure(stacked) == jax.tree_util.tree_structure(unboxed(scanned, batch))
  expected = full_logits(module, params, batch)
  np.testing.assert_allclose(full_logits(scanned, stacked, batch), expected, rtol=1e-5, atol=1e-5)
  got, fed = stepwise_logits(DecoderOnlyModel(scanned), stacked, batch)
  real = fed & (batch["decoder_target_tokens"] > 0)
  np.testing.assert_allclose(got[real], expected[real], rtol=1e-5, atol=1e-5)


def test_loss_and_scores_count_the_targets_only():
  module = DecoderOnly(RELATIVE, family(2))
  model = DecoderOnlyModel(module, z_loss=0.0)
  batch = prefix_lm_batch()
  params = unboxed(module, batch)
  log_probs = jax.nn.log_softmax(full_logits(module, params, batch))
  picked = np.take_along_axis(np.asarray(log_probs), batch["decoder_target_tokens"][..., None], axis=-1)[..., 0]
  per_row = -(picked * batch["decoder_loss_weights"]).sum(axis=1)
  loss, metrics = model.loss_fn(params, batch, None)
  np.testing.assert_allclose(loss, per_row.sum(), rtol=1e-5)
  np.testing.assert_allclose(model.score_batch(params, batch), -per_row, rtol=1e-5)
  del metrics
  # Weights on every real token would add the inputs' likelihood: a larger loss.
  all_tokens = {**batch, "decoder_loss_weights": (batch["decoder_target_tokens"] > 0).astype(np.int32)}
  assert model.loss_fn(params, all_tokens, None)[0] > loss + 1.0


def test_seqio_decoder_feature_converter_gives_prefix_lm_features_the_model_reads():
  tf = pytest.importorskip("tensorflow")
  model = DecoderOnlyModel(DecoderOnly(RELATIVE, family(2)))
  ds = tf.data.Dataset.from_tensors({"inputs": tf.constant([11, 12, 1], tf.int32),
                                     "targets": tf.constant([13, 1], tf.int32)})
  converted = next(iter(model.FEATURE_CONVERTER_CLS(pack=False)(ds, {"inputs": 4, "targets": 3}).as_numpy_iterator()))
  np.testing.assert_array_equal(converted["decoder_target_tokens"], [11, 12, 1, 13, 1, 0, 0])
  np.testing.assert_array_equal(converted["decoder_input_tokens"], [0, 11, 12, 1, 13, 1, 0])
  np.testing.assert_array_equal(converted["decoder_loss_weights"], [0, 0, 0, 1, 1, 0, 0])
  np.testing.assert_array_equal(converted["decoder_causal_attention"], [1, 1, 1, 1, 0, 0, 0])
  batch = {k: v[None] for k, v in converted.items()}
  params = unboxed(model.module, batch)
  loss, _ = model.loss_fn(params, batch, None)
  assert np.isfinite(loss) and loss > 0


def greedy_reference(module: DecoderOnly, params: dict, batch: dict[str, np.ndarray], eos_id: int = 1) -> np.ndarray:
  """New tokens by repeated full passes: append the argmax after each row's inputs until EOS or the end."""
  tokens = batch["decoder_input_tokens"] * batch["decoder_causal_attention"]
  causal = batch["decoder_causal_attention"]
  lengths = causal.sum(axis=1) - 1
  rows, length = tokens.shape
  out = np.zeros_like(tokens)
  for r in range(rows):
    row = tokens[r:r + 1].copy()
    for j in range(lengths[r], length):
      targets = np.pad(row[:, 1:], ((0, 0), (0, 1)))
      targets[0, j] = 1  # a real target at j, so the position is not padding
      logits = full_logits(module, params, {"decoder_input_tokens": row, "decoder_target_tokens": targets,
                                            "decoder_causal_attention": causal[r:r + 1]})
      token = int(np.argmax(logits[0, j]))
      out[r, j - lengths[r]] = token
      if token == eos_id or j + 1 == length:
        break
      row[0, j + 1] = token
  return out


@pytest.mark.parametrize("combination", ["prefix", "prefix_after_bos"])
def test_predict_batch_prefills_prompt_and_inputs_and_returns_only_new_tokens(combination):
  module = DecoderOnly(ROTARY, family(3, combination))
  batch = prefix_lm_batch()
  params = unboxed(module, batch, seed=3)
  model = DecoderOnlyModel(module, decode_fn=decoding.temperature_sample,
                           default_decoder_params={"temperature": 0.0, "topk": 0})
  got = np.asarray(model.predict_batch(params, batch))
  expected = greedy_reference(module, params, batch)
  np.testing.assert_array_equal(got, expected)
  assert (got[:, :2] > 0).all()  # decoding produced new tokens at the start of each row
  beams = DecoderOnlyModel(module, default_decoder_params={"num_decodes": 2, "alpha": 0.0})
  assert np.asarray(beams.predict_batch(params, batch)).shape == batch["decoder_input_tokens"].shape


def test_only_the_prompt_trains():
  module = DecoderOnly(RELATIVE, family(3))
  model = DecoderOnlyModel(module)
  batch = prefix_lm_batch()
  params = unboxed(module, batch)
  trainable, frozen = optim.split_trainable(params, [PROMPT_REGEX])
  assert list(traverse_util.flatten_dict(trainable, sep="/")) == ["decoder/prompt/prompt/prompt"]
  grads = jax.grad(lambda p: model.loss_fn(p, batch, None)[0])(params)
  flat_grads = traverse_util.flatten_dict(grads, sep="/")
  assert np.abs(flat_grads["decoder/prompt/prompt/prompt"]).sum() > 0
  opt = optax.adam(0.1)
  state = opt.init(trainable)
  loss_of = jax.jit(lambda t: model.loss_fn(optim.merge_trainable(t, frozen), batch, None)[0])
  first = float(loss_of(trainable))
  for _ in range(10):
    updates, state = opt.update(jax.grad(loss_of)(trainable), state)
    trainable = optax.apply_updates(trainable, updates)
  assert float(loss_of(trainable)) < first - 0.1


@pytest.mark.parametrize("kwargs,message", [
    (dict(combination="suffix_before_eos"), "prefix_after_bos"),
    (dict(encoder_first_pass=True), "encoder_first_pass"),
])
def test_unsupported_prompt_settings_raise_clear_errors(kwargs, message):
  combination = kwargs.pop("combination", "prefix")
  module = DecoderOnly(RELATIVE, family(2, combination, **kwargs))
  with pytest.raises(ValueError, match=message):
    unboxed(module, lm_batch())


def test_config_errors_name_the_fix():
  with pytest.raises(ValueError, match="must divide num_heads"):
    RELATIVE.replace(num_kv_heads=3)
  with pytest.raises(ValueError, match="position_embedding"):
    RELATIVE.replace(position_embedding="absolute")


def test_family_site_and_stack_hooks_plug_in_and_decode_alike():
  """IA³ site hooks (on 2 key/value heads) and key/value prefixes of the decoder's `self_attention` work in the
  decoder-only model with an input prompt, and step-by-step decoding still reproduces the full pass."""
  from prompt_tuning.families import deep, ia3  # pylint: disable=import-outside-toplevel
  prefix = functools.partial(deep.PrefixTuning, length=2, attentions=("self_attention",))
  hooked = family(3).replace(site_hooks=ia3.site_hooks(), stack_hooks={"prefix": prefix})
  module = DecoderOnly(ROTARY, hooked)
  batch = prefix_lm_batch()
  params = unboxed(module, batch, seed=4)
  flat = traverse_util.flatten_dict(params, sep="/")
  assert flat["decoder/prefix/self_attention"].shape == (2, 2, 2, 16)  # [layers, k/v, P, heads * head_dim]
  assert flat["decoder/layers_0/self_attention/k_conv/ia3_scaling"].shape == (2, 4)  # key/value heads
  plain = {k: v for k, v in flat.items() if "ia3" not in k and "/prefix/" not in k}
  without_prefix = full_logits(DecoderOnly(ROTARY, family(3).replace(site_hooks=ia3.site_hooks())),
                               traverse_util.unflatten_dict({k: v for k, v in flat.items() if "/prefix/" not in k},
                                                            sep="/"), batch)
  np.testing.assert_allclose(without_prefix, full_logits(DecoderOnly(ROTARY, family(3)),
                                                         traverse_util.unflatten_dict(plain, sep="/"), batch),
                             rtol=1e-6, atol=1e-6)  # IA³ starts at ones: the plain model
  expected = full_logits(module, params, batch)
  got, fed = stepwise_logits(DecoderOnlyModel(module), params, batch)
  real = fed & (batch["decoder_target_tokens"] > 0)
  np.testing.assert_allclose(got[real], expected[real], rtol=1e-5, atol=1e-5)


def test_every_logical_axis_has_a_partitioning_rule():
  module = DecoderOnly(ROTARY.replace(logits_via_embedding=False), family(3))
  batch = lm_batch()
  variables = module.init(jax.random.PRNGKey(0), batch["decoder_input_tokens"], batch["decoder_target_tokens"])
  names = {name for leaf in jax.tree_util.tree_leaves(variables["params"], is_leaf=lambda x: hasattr(x, "names"))
           for name in leaf.names}
  ruled = {name for name, _ in partitioning.default_logical_axis_rules()}
  assert names and names <= ruled, names - ruled
