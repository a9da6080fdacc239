"""T5 1.1 in flax.linen: tree, logical axes, sizes, decoding with a KV cache, scan and remat equivalence."""
from __future__ import annotations

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from prompt_tuning import prompts
from prompt_tuning.family import PromptFamily
from prompt_tuning.models import EncoderDecoder, T5Config, get_config
from prompt_tuning.models import t5 as t5_lib
from prompt_tuning.models import layers
from prompt_tuning.models.layers import ENCODED_KV, relative_position_buckets
from prompt_tuning.models.scan_utils import stack_layers, unstack_layers
from prompt_tuning.runtime.models import EncoderDecoderModel

ENC = jnp.array([[5, 6, 7, 8, 1, 0, 0], [9, 10, 1, 0, 0, 0, 0]], jnp.int32)
TGT = jnp.array([[3, 4, 5, 1, 0], [6, 7, 8, 9, 1]], jnp.int32)
DEC_IN = jnp.pad(TGT, ((0, 0), (1, 0)))[:, :-1]


def tiny(**kw) -> T5Config:
  return get_config("tiny", dtype=jnp.float32, **kw)


def init_params(cfg: T5Config, prompt_factory=None, seed: int = 0, family: PromptFamily | None = None):
  model = EncoderDecoder(cfg, family or PromptFamily(prompt_factory))
  variables = model.init(jax.random.PRNGKey(seed), ENC, DEC_IN, TGT)
  return model, nn.meta.unbox(variables["params"])


def expected_t5_1_1_tree(d: int, hk: int, f: int, heads: int, buckets: int, vocab: int, layers: int):
  """Flaxformer's T5 1.1 tree (T5X_COMPAT §2.1), written out from the spec."""
  tree = {"token_embedder/embedding": (vocab, d), "decoder/logits_dense/kernel": (d, vocab),
          "encoder/relpos_bias/rel_embedding": (heads, buckets), "decoder/relpos_bias/rel_embedding": (heads, buckets),
          "encoder/encoder_norm/scale": (d,), "decoder/decoder_norm/scale": (d,)}
  attn = {"query/kernel": (d, hk), "key/kernel": (d, hk), "value/kernel": (d, hk), "out/kernel": (hk, d)}
  mlp = {"mlp/wi_0/kernel": (d, f), "mlp/wi_1/kernel": (d, f), "mlp/wo/kernel": (f, d)}
  for i in range(layers):
    e, dd = f"encoder/layers_{i}/", f"decoder/layers_{i}/"
    tree.update({e + "pre_attention_layer_norm/scale": (d,), e + "pre_mlp_layer_norm/scale": (d,)})
    tree.update({e + "attention/" + k: v for k, v in attn.items()})
    tree.update({e + k: v for k, v in mlp.items()})
    for ln in ("pre_self_attention_layer_norm", "pre_cross_attention_layer_norm", "pre_mlp_layer_norm"):
      tree[dd + ln + "/scale"] = (d,)
    for blk in ("self_attention", "encoder_decoder_attention"):
      tree.update({dd + blk + "/" + k: v for k, v in attn.items()})
    tree.update({dd + k: v for k, v in mlp.items()})
  return tree


def test_tree_matches_flaxformer_t5_1_1_names_and_shapes():
  _, params = init_params(tiny())
  got = {k: v.shape for k, v in traverse_util.flatten_dict(params, sep="/").items()}
  assert got == expected_t5_1_1_tree(d=4, hk=4, f=8, heads=2, buckets=4, vocab=32128, layers=2)


def test_small_has_non_square_attention_kernels():
  shapes = t5_lib.abstract_variables(get_config("small"))["params"]
  q = shapes["encoder"]["layers_0"]["attention"]["query"]["kernel"]
  o = shapes["encoder"]["layers_0"]["attention"]["out"]["kernel"]
  assert (q.value.shape, o.value.shape) == ((512, 384), (384, 512))


def test_every_parameter_has_logical_axes():
  variables = t5_lib.abstract_variables(tiny(), PromptFamily(lambda: prompts.PromptedInputs(prompts.Prompt(3))))
  flat = traverse_util.flatten_dict(variables["params"], sep="/")
  for path, leaf in flat.items():
    assert isinstance(leaf, nn.LogicallyPartitioned), path
    assert len(leaf.names) == len(leaf.value.shape), path
  assert flat["encoder/prompt/prompt/prompt"].names == ("prompt", "prompt_embed")
  assert flat["token_embedder/embedding"].names == ("vocab", "embed")
  assert flat["encoder/layers_0/attention/query/kernel"].names == ("embed", "joined_kv")
  assert flat["decoder/layers_1/mlp/wo/kernel"].names == ("mlp", "embed")
  assert flat["decoder/relpos_bias/rel_embedding"].names == ("heads", "relpos_buckets")


@pytest.mark.parametrize("size,layers,d", [("small", 8, 512), ("base", 12, 768), ("large", 24, 1024),
                                          ("xl", 24, 2048), ("xxl", 24, 4096)])
def test_sizes(size, layers, d):
  cfg = get_config(size)
  assert (cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.emb_dim) == (layers, layers, d)
  assert cfg.dtype == jnp.bfloat16 and cfg.vocab_size == 32128
  assert get_config(size, vocab="mt5").vocab_size == 250112


def test_param_counts_match_paper_table_4_up_to_one_vector():
  # Lester et al. Table 4 counts one extra d-sized vector per model (e.g. Small 76,961,664 = ours + 512).
  assert t5_lib.num_params(get_config("small")) + 512 == 76_961_664
  assert t5_lib.num_params(get_config("base")) + 768 == 247_578_624


def test_unknown_size_and_bad_config_errors():
  with pytest.raises(ValueError, match="Unknown model size 'huge'.*xxl"):
    get_config("huge")
  with pytest.raises(ValueError, match="remat_policy='some'"):
    T5Config(remat_policy="some")
  with pytest.raises(ValueError, match="num_heads=0"):
    T5Config(num_heads=0)


def test_relative_position_buckets_match_t5_formula():
  b = relative_position_buckets(1, 200, True, 32, 128)[0]
  # Bidirectional: keys after the query (memory > query) land in the upper half of the buckets.
  assert b[0] == 0 and b[1] == 17 and b[7] == 23 and b[8] == 24 and b[199] == 31
  c = relative_position_buckets(200, 1, False, 32, 128)[:, 0]
  assert c[0] == 0 and c[15] == 15 and c[16] == 16 and c[199] == 31


def test_padding_is_masked_and_padded_logits_are_zero():
  model, params = init_params(tiny())
  logits = model.apply({"params": params}, ENC, DEC_IN, TGT)
  assert logits.dtype == jnp.float32 and logits.shape == (2, 5, 32128)
  # Position 4 of row 0 has decoder input 1 (EOS) -> kept; rows beyond the first pad after EOS are exactly 0.
  dec_in = jnp.array([[0, 3, 1, 0, 0]]); tgt = jnp.array([[3, 1, 0, 0, 0]])
  out = model.apply({"params": params}, ENC[:1], dec_in, tgt)
  assert np.all(np.asarray(out[0, 3:]) == 0.0) and np.any(np.asarray(out[0, 2]) != 0.0)
  # More encoder padding changes nothing at real target positions: padded keys are masked out.
  other = model.apply({"params": params}, jnp.pad(ENC, ((0, 0), (0, 5))), DEC_IN, TGT)
  real = np.asarray(TGT > 0)
  np.testing.assert_allclose(np.asarray(other)[real], np.asarray(logits)[real], rtol=1e-5, atol=1e-5)


def test_dropout_only_with_rng():
  model, params = init_params(tiny(dropout_rate=0.5))
  a = model.apply({"params": params}, ENC, DEC_IN, TGT)
  b = model.apply({"params": params}, ENC, DEC_IN, TGT)
  c = model.apply({"params": params}, ENC, DEC_IN, TGT, enable_dropout=True, rngs={"dropout": jax.random.PRNGKey(1)})
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def _decode_step_by_step(model, params, enc, dec_in, stored_kv: bool = False):
  """Logits of feeding `dec_in` one token at a time through the KV cache; `stored_kv`: with cross-attention's
  keys and values computed once (`EncoderDecoderModel.encoded_kv`), as `predict_batch` decodes."""
  max_len = dec_in.shape[1]
  cache = model.apply({"params": params}, enc, jnp.ones_like(dec_in), jnp.ones_like(dec_in), decode=True,
                      max_decode_length=max_len, mutable=["cache"])[1]["cache"]
  encoded = model.apply({"params": params}, enc, method=model.encode)
  kv = {ENCODED_KV: EncoderDecoderModel(model).encoded_kv(params, encoded, enc)} if stored_kv else {}
  steps = []
  for i in range(max_len):
    logits, mutated = model.apply({"params": params, "cache": cache, **kv}, encoded, enc, dec_in[:, i:i + 1], None,
                                  decode=True, max_decode_length=max_len, method=model.decode, mutable=["cache"])
    cache = mutated["cache"]
    steps.append(logits[:, 0])
  return jnp.stack(steps, axis=1)


@pytest.mark.parametrize("with_prompt,stored_kv,scan", [(False, False, False), (True, False, False),
                                                        (True, True, False), (True, True, True)])
def test_incremental_decoding_reproduces_full_sequence_logits(with_prompt, stored_kv, scan):
  factory = (lambda: prompts.PromptedInputs(prompts.Prompt(3))) if with_prompt else None
  model, params = init_params(tiny(scan_layers=scan), factory)
  tgt = jnp.array([[3, 4, 5, 6, 1], [6, 7, 8, 9, 1]], jnp.int32)  # no padding: every position is compared
  dec_in = jnp.pad(tgt, ((0, 0), (1, 0)))[:, :-1]
  full = model.apply({"params": params}, ENC, dec_in, tgt)
  stepped = _decode_step_by_step(model, params, ENC, dec_in, stored_kv)
  np.testing.assert_allclose(stepped, full, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("scan", [False, True])
def test_cross_attention_keys_values_are_computed_once_per_decode(scan):
  """`encoded_kv`: every decoder layer's cross-attention keys and values, head-major, each example's repeated for
  its beams; decoding then reads them and never runs the cross-attention key/value projections."""
  model, params = init_params(tiny(scan_layers=scan), lambda: prompts.PromptedInputs(prompts.Prompt(3)))
  assert set(model.init(jax.random.PRNGKey(0), ENC, DEC_IN, TGT)) == {"params"}  # init stores none of them
  wrapper = EncoderDecoderModel(model)
  encoded = model.apply({"params": params}, ENC, method=model.encode)  # [2, 3 + 7, 4]
  kv = wrapper.encoded_kv(params, encoded, ENC, num_decodes=3)
  flat = traverse_util.flatten_dict(kv, sep="/")
  cfg = tiny()
  layer_names = ["layers"] if scan else [f"layers_{i}" for i in range(cfg.num_decoder_layers)]
  assert set(flat) == {f"decoder/{l}/encoder_decoder_attention/{n}" for l in layer_names for n in ("keys", "values")}
  leading = (cfg.num_decoder_layers,) if scan else ()
  assert all(a.shape == leading + (6, cfg.num_heads, 10, cfg.head_dim) for a in flat.values())
  keys = flat[f"decoder/{layer_names[0]}/encoder_decoder_attention/keys"]
  keys = keys[0] if scan else keys
  np.testing.assert_array_equal(keys[0], keys[2])  # beams of one example are adjacent copies
  assert not np.array_equal(keys[0], keys[3])
  # Without the cross-attention key/value kernels the decoder still decodes, from the stored keys and values.
  pruned = {k: v for k, v in traverse_util.flatten_dict(params, sep="/").items()
            if not re.search(r"encoder_decoder_attention/(key|value)/", k)}
  pruned = traverse_util.unflatten_dict(pruned, sep="/")
  once = {ENCODED_KV: wrapper.encoded_kv(params, encoded, ENC)}
  cache = model.apply({"params": params}, ENC, DEC_IN, DEC_IN, decode=True, max_decode_length=5,
                      mutable=["cache"])[1]["cache"]
  step = lambda p, extra: model.apply({"params": p, "cache": cache, **extra}, encoded, ENC, DEC_IN[:, :1], None,
                                      decode=True, max_decode_length=5, method=model.decode, mutable=["cache"])[0]
  np.testing.assert_allclose(step(pruned, once), step(params, {}), rtol=1e-5, atol=1e-6)


def _scan_test_loss(model: EncoderDecoder, params) -> jax.Array:
  return jnp.sum(jax.nn.log_softmax(model.apply({"params": params}, ENC, DEC_IN, TGT))[..., 3])


@functools.lru_cache(maxsize=None)
def _unrolled_reference():
  """The unrolled model's parameters, logits and gradients: what every scan / remat variant must reproduce."""
  base_model, params = init_params(tiny())
  logits = jax.jit(base_model.apply)({"params": params}, ENC, DEC_IN, TGT)
  grads = jax.jit(jax.grad(lambda q: _scan_test_loss(base_model, q)))(params)
  return params, logits, grads


@pytest.mark.parametrize("scan,remat,fused", [(False, "minimal", True), (False, "full", True), (True, "none", True),
                                              (True, "minimal", True), (True, "full", True),
                                              (False, "none", False)])
def test_scan_and_remat_match_unrolled(scan, remat, fused):
  """Against the shipped default (unrolled, fused attention); `fused=False` is the einsum attention path."""
  _assert_matches_unrolled_reference(EncoderDecoder(tiny(scan_layers=scan, remat_policy=remat,
                                                          fused_attention=fused)), scan)


def test_dot_product_attention_as_on_gpu_matches_the_cpu_default(monkeypatch):
  """Fused attention is head-major einsums on CPU and jax.nn.dot_product_attention elsewhere: the same model."""
  _unrolled_reference()  # computed the CPU way, before the switch
  monkeypatch.setattr(layers, "HEAD_MAJOR_PLATFORMS", frozenset())
  _assert_matches_unrolled_reference(EncoderDecoder(tiny()), scan=False)


def _assert_matches_unrolled_reference(model: EncoderDecoder, scan: bool) -> None:
  params, ref_logits, g_ref = _unrolled_reference()
  p = stack_layers(params) if scan else params
  logits = jax.jit(model.apply)({"params": p}, ENC, DEC_IN, TGT)
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)

  g = jax.jit(jax.grad(lambda q: _scan_test_loss(model, q)))(p)
  g = unstack_layers(g) if scan else g
  flat_g = traverse_util.flatten_dict(g)
  for path, a in traverse_util.flatten_dict(g_ref).items():
    np.testing.assert_allclose(flat_g[path], a, rtol=1e-4, atol=1e-5, err_msg=str(path))


def test_scanned_init_tree_stacks_layers():
  variables = t5_lib.abstract_variables(tiny(scan_layers=True))
  flat = traverse_util.flatten_dict(variables["params"], sep="/")
  leaf = flat["encoder/layers/attention/query/kernel"]
  assert leaf.value.shape == (2, 4, 4) and leaf.names == ("layers", "embed", "joined_kv")


def test_bfloat16_activations_float32_logits_and_params():
  model, params = init_params(get_config("tiny"))
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
  logits = model.apply({"params": params}, ENC, DEC_IN, TGT)
  assert logits.dtype == jnp.float32
  ref = EncoderDecoder(tiny()).apply({"params": params}, ENC, DEC_IN, TGT)
  assert float(jnp.mean(jnp.abs(logits - ref))) < 0.05  # bfloat16 rounding only
  assert not np.array_equal(np.asarray(logits), np.asarray(ref))
