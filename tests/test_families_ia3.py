"""IA³ (`families/ia3.gin`, site hooks of a `PromptFamily`): scaling vectors on keys, values and MLP hiddens."""
from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from cli_utils import MODEL_FLAGS, TASK_FLAGS, run_cli, write_tiny_t5x_checkpoint
from prompt_tuning.families import ia3
from prompt_tuning.family import PromptFamily
from prompt_tuning.models import EncoderDecoder
from prompt_tuning.models.scan_utils import stack_layers
from test_t5_model import DEC_IN, ENC, TGT, _decode_step_by_step, init_params, tiny

IA3 = PromptFamily(site_hooks=ia3.site_hooks(), trainable_regexes=ia3.TRAINABLE_REGEXES)
ATTENTIONS = {"encoder": ("attention",), "decoder": ("self_attention", "encoder_decoder_attention")}


def _ia3_paths(layers: int = 2) -> dict[str, tuple[int, ...]]:
  """Flaxformer's names for the reference's IA³ (tiny: 2 heads of 2, MLP 8)."""
  paths = {}
  for stack, attentions in ATTENTIONS.items():
    for i in range(layers):
      for attention in attentions:
        for conv in ("k_conv", "v_conv"):
          paths[f"{stack}/layers_{i}/{attention}/{conv}/ia3_scaling"] = (2, 2)
      paths[f"{stack}/layers_{i}/mlp/intermediate_conv/ia3_scaling"] = (8,)
  return paths


def _flat(params):
  return traverse_util.flatten_dict(params, sep="/")


def _with_ia3(params, ia3_params):
  return traverse_util.unflatten_dict({**_flat(params), **_flat(ia3_params)}, sep="/")


def test_ia3_adds_exactly_the_scalings_and_starts_as_the_identity():
  plain_model, plain = init_params(tiny())
  model, params = init_params(tiny(), family=IA3)
  added = {k: v.shape for k, v in _flat(params).items() if k not in _flat(plain)}
  assert added == _ia3_paths()
  assert all(np.all(_flat(params)[k] == 1.0) for k in added)
  np.testing.assert_array_equal(model.apply({"params": _with_ia3(plain, params)}, ENC, DEC_IN, TGT),
                                plain_model.apply({"params": plain}, ENC, DEC_IN, TGT))


def test_scalings_act_as_rescaled_key_value_and_output_kernels():
  """IA³ on keys/values/hiddens equals folding the vectors into the key, value and wo kernels."""
  plain_model, plain = init_params(tiny())
  model, params = init_params(tiny(), family=IA3)
  rng = np.random.default_rng(0)
  scaled = dict(_flat(_with_ia3(plain, params)))
  folded = dict(_flat(plain))
  for path, shape in _ia3_paths().items():
    s = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    scaled[path] = s
    block = path.rsplit("/", 2)[0]
    if "intermediate_conv" in path:
      folded[f"{block}/wo/kernel"] = folded[f"{block}/wo/kernel"] * s[:, None]
    else:
      kernel = f"{block}/{'key' if path.split('/')[-2] == 'k_conv' else 'value'}/kernel"
      folded[kernel] = folded[kernel] * s.reshape(-1)[None, :]
  out = model.apply({"params": traverse_util.unflatten_dict(scaled, sep="/")}, ENC, DEC_IN, TGT)
  ref = plain_model.apply({"params": traverse_util.unflatten_dict(folded, sep="/")}, ENC, DEC_IN, TGT)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  assert np.abs(out - plain_model.apply({"params": plain}, ENC, DEC_IN, TGT)).max() > 1e-3

  # The KV cache and the cross-attention keys/values stored for a decode hold scaled keys and values: step-by-step
  # decoding reproduces the full pass; so does scan.
  tgt = jnp.array([[3, 4, 5, 6, 1], [6, 7, 8, 9, 1]], jnp.int32)
  dec_in = jnp.pad(tgt, ((0, 0), (1, 0)))[:, :-1]
  p = traverse_util.unflatten_dict(scaled, sep="/")
  for stored_kv in (False, True):
    np.testing.assert_allclose(_decode_step_by_step(model, p, ENC, dec_in, stored_kv),
                               model.apply({"params": p}, ENC, dec_in, tgt), rtol=2e-5, atol=2e-5)
  scanned = EncoderDecoder(tiny(scan_layers=True, remat_policy="minimal"), IA3)
  np.testing.assert_allclose(scanned.apply({"params": stack_layers(p)}, ENC, DEC_IN, TGT), out, rtol=1e-5, atol=1e-5)


def test_ia3_gin_trains_only_the_scalings_from_the_cli(tmp_path):
  """models/t5_1_1_tiny.gin + families/ia3.gin + runs/ia3_finetune.gin on a frozen T5X checkpoint: the loss
  falls at the paper's learning rate (3e-3), and the run exports exactly the 20 scaling vectors, trained."""
  ckpt = write_tiny_t5x_checkpoint(tmp_path / "pretrained")
  model_dir = tmp_path / "run"
  flags = ["--gin_file=models/t5_1_1_tiny.gin", *MODEL_FLAGS[1:], "--gin_file=families/ia3.gin",
           "--gin_file=runs/ia3_finetune.gin", *TASK_FLAGS, f"--gin.INITIAL_CHECKPOINT_PATH='{ckpt}'",
           f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=19", "--gin.BATCH_SIZE=8", "--gin.STATS_PERIOD=8",
           "--gin.SAVE_PERIOD=16", "--gin.EVAL_PERIOD=0", "--gin.DROPOUT_RATE=0.0"]
  proc = run_cli("train", flags, tmp_path)
  losses = [float(x) for x in re.findall(r"step \d+/\d+ +loss ([\d.]+)", proc.stderr)]
  assert len(losses) == 2 and losses[1] < losses[0], proc.stderr[-3000:]
  exported = {p.name for p in (model_dir / "numpy_checkpoints" / "checkpoint_19").iterdir()
              if not p.name.endswith(".npy")}
  assert exported == {k.replace("/", ".") for k in _ia3_paths()}
  assert any(np.abs(np.load(model_dir / "numpy_checkpoints" / "checkpoint_19" / f"{n}.npy") - 1.0).max() > 1e-3
             for n in exported)
  config = (model_dir / "config.gin").read_text()
  assert "site_hooks = @ia3.site_hooks()" in config and re.search(r"\.\*/ia3_scaling\.\*", config)
  assert re.search(r"^LEARNING_RATE = 0\.003$", config, re.M), config


def test_family_costs_count_the_scalings_against_the_plain_model():
  from cli_utils import TESTS_DIR
  from prompt_tuning.families import count
  cost = count.costs_from_gin(["models/t5_1_1_tiny.gin", "families/ia3.gin", "byte_vocab_tiny.gin"],
                              search_paths=[str(TESTS_DIR / "gin")])
  assert cost.trainable_params == sum(int(np.prod(s)) for s in _ia3_paths().values()) == 80
  assert cost.extra_flops > 0  # one multiply per scaled element, against the model without IA³
