"""The train step and run state: what trains, what stays frozen, compilation, microbatches, sharding, loading."""
from __future__ import annotations

import functools
import itertools
import json
import pathlib
import re
import signal
from typing import Any
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from cli_utils import BYTE_VOCAB_ROWS, write_tiny_t5x_checkpoint
from prompt_tuning.family import PromptFamily
from prompt_tuning import prompts
from prompt_tuning.models import EncoderDecoder, get_config
from prompt_tuning.runtime import decoding, optim, summaries
from prompt_tuning.runtime.checkpoints import load_t5x_params
from prompt_tuning.runtime.checkpoints.orbax_io import RunCheckpointer
from prompt_tuning.runtime.checkpoints.restore import (ParamTreeMismatchError, load_checkpoint_variable, load_params,
                                                       merge_checkpoint_into)
from prompt_tuning.runtime.configs import RestoreCheckpointConfig
from prompt_tuning.runtime.models import EncoderDecoderModel
from prompt_tuning.runtime.partitioning import Partitioner
from prompt_tuning.runtime.state_init import build_run_params
from prompt_tuning.runtime.trainer import (Evaluations, NonFiniteLossError, Trainer, TrainerConfig, init_train_state,
                                           make_train_step, partition_train_step)

SHAPES = {"encoder_input_tokens": (4, 6), "decoder_input_tokens": (4, 4)}
PROMPT_RESTORE = dict(assignment_map=((r".*prompt.*", None),), fallback_to_scratch=True)


def batch(seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  enc = rng.integers(3, 200, (4, 6)).astype(np.int32)
  enc[:, -1] = 0
  tgt = rng.integers(3, 200, (4, 4)).astype(np.int32)
  tgt[1:, -1] = 0
  return {"encoder_input_tokens": enc, "decoder_target_tokens": tgt,
          "decoder_input_tokens": np.pad(tgt, ((0, 0), (1, 0)))[:, :-1],
          "decoder_loss_weights": (tgt > 0).astype(np.float32)}


def prompt_model(length: int = 3, **cfg) -> EncoderDecoderModel:
  config = get_config("tiny", dtype=jnp.float32, vocab_size=BYTE_VOCAB_ROWS, **cfg)
  family = PromptFamily(lambda: prompts.PromptedInputs(prompts.Prompt(length)))
  return EncoderDecoderModel(EncoderDecoder(config, family))


def abstract_params(model: EncoderDecoderModel) -> Any:
  """The model's parameter tree as shapes, without initialising it."""
  shapes = jax.eval_shape(lambda k: model.get_initial_variables(k, SHAPES), jax.random.PRNGKey(0))
  return nn.meta.unbox(shapes["params"])


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> pathlib.Path:
  return write_tiny_t5x_checkpoint(tmp_path_factory.mktemp("ckpt"))


def test_only_the_prompt_trains_and_frozen_weights_stay_bit_identical(pretrained):
  model = prompt_model()
  restore = RestoreCheckpointConfig(path=str(pretrained), **PROMPT_RESTORE)
  run = build_run_params(model, Partitioner(), SHAPES, restore, [".*/prompt/.*"], jax.random.PRNGKey(0))
  assert run.checkpoint_step == 3
  assert list(traverse_util.flatten_dict(run.trainable, sep="/")) == ["encoder/prompt/prompt/prompt"]
  tx = optim.adafactor(0.3)
  partitioner = Partitioner()
  before = np.asarray(run.trainable["encoder"]["prompt"]["prompt"]["prompt"]).copy()
  step, state = partition_train_step(make_train_step(model, tx), init_train_state(run.trainable, tx), run.frozen,
                                     run.frozen_shardings, partitioner)
  for i in range(3):
    state, metrics = step(state, run.frozen, partitioner.shard_batch(batch(i)), jax.random.PRNGKey(0))
  assert step.cache_size() == 1  # compiled once: no recompilation after the first step
  assert int(state.step) == 3 and np.isfinite(float(metrics["loss"]))
  assert not np.array_equal(np.asarray(state.params["encoder"]["prompt"]["prompt"]["prompt"]), before)
  ckpt = traverse_util.flatten_dict(load_t5x_params(str(pretrained)), sep="/")
  frozen = traverse_util.flatten_dict(jax.device_get(run.frozen), sep="/")
  assert set(frozen) == set(ckpt)
  for path, value in ckpt.items():
    assert np.array_equal(frozen[path], value), path


def test_optimizer_state_exists_only_for_trainable_parameters(pretrained):
  model = prompt_model()
  restore = RestoreCheckpointConfig(path=str(pretrained), **PROMPT_RESTORE)
  run = build_run_params(model, Partitioner(), SHAPES, restore, [".*/prompt/.*"], jax.random.PRNGKey(0))
  state = init_train_state(run.trainable, optim.adafactor(0.3))
  sizes = [x.size for x in jax.tree_util.tree_leaves(state.opt_state) if hasattr(x, "size") and x.ndim]
  assert sum(sizes) <= 2 * 3 * 4  # the [3, 4] prompt's moments, nothing for ~100k frozen weights


def test_microbatches_accumulate_the_same_update():
  model = prompt_model()
  run = build_run_params(model, Partitioner(), SHAPES, None, [".*/prompt/.*"], jax.random.PRNGKey(0))
  tx = optim.adafactor(0.3)
  outs = []
  for n in (None, 2, 4):
    state = init_train_state(jax.tree_util.tree_map(jnp.copy, run.trainable), tx)
    step = jax.jit(make_train_step(model, tx, num_microbatches=n))
    state, metrics = step(state, run.frozen, batch(), jax.random.PRNGKey(0))
    outs.append((float(metrics["loss"]), np.asarray(state.params["encoder"]["prompt"]["prompt"]["prompt"])))
  for loss, prompt in outs[1:]:
    assert loss == pytest.approx(outs[0][0], rel=1e-5)
    np.testing.assert_allclose(prompt, outs[0][1], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="not divisible by num_microbatches=3"):
    make_train_step(model, tx, num_microbatches=3)(init_train_state(run.trainable, tx), run.frozen, batch(),
                                                  jax.random.PRNGKey(0))


def tiny_trainer(model_dir: pathlib.Path, **settings) -> Trainer:
  """A `Trainer` of a fresh 3-token prompt on the tiny model (no initial checkpoint: it starts at step 0)."""
  model, partitioner = prompt_model(), Partitioner()
  run = build_run_params(model, partitioner, SHAPES, None, [".*/prompt/.*"], jax.random.PRNGKey(0))
  config = TrainerConfig(str(model_dir), batch_size=4, feature_lengths={"inputs": 6, "targets": 4}, **settings)
  return Trainer(model, optim.adafactor(0.3), run, partitioner, RunCheckpointer(str(model_dir)), config,
                 jax.random.PRNGKey(1))


def batches(start: int = 0, nan_at: int | None = None, sigterm_at: int | None = None):
  """`batch(i)` for i = start, start + 1, ...; at `nan_at` with NaN loss weights, at `sigterm_at` after a SIGTERM."""
  for i in itertools.count(start):
    b = batch(i)
    if i == nan_at:
      b["decoder_loss_weights"] = np.full_like(b["decoder_loss_weights"], np.nan)
    if i == sigterm_at:
      signal.raise_signal(signal.SIGTERM)
    yield b


def saved_steps(model_dir: pathlib.Path) -> list[int]:
  return sorted(int(p.name.split("_")[1]) for p in model_dir.glob("checkpoint_*") if "." not in p.name)


def test_trainer_logs_saves_and_evaluates_on_its_periods_then_resumes(tmp_path):
  trainer = tiny_trainer(tmp_path, stats_period=2, eval_period=3, save_period=2)
  assert saved_steps(tmp_path) == [0]  # the starting point is saved before the first step (T5X)
  out = trainer.train_to(5, batches(), Evaluations({"held_out": lambda: [batch(100), batch(101)]}))
  trainer.close()
  assert out["step"] == trainer.position == 5 and saved_steps(tmp_path) == [0, 2, 4, 5]  # and the last step
  assert [step for step, _ in summaries.read_scalars(tmp_path / "train")["loss"]] == [2, 4, 5]
  held_out = summaries.read_scalars(tmp_path / "training_eval" / "held_out")
  assert [step for step, _ in held_out["loss"]] == [3, 5]
  assert out["eval"]["training_eval"]["held_out"]["loss"] == pytest.approx(held_out["loss"][-1][1])
  resumed = tiny_trainer(tmp_path, save_period=2)
  assert (resumed.step, resumed.position) == (5, 5) and saved_steps(tmp_path) == [0, 2, 4, 5]
  np.testing.assert_array_equal(resumed.state.params["encoder"]["prompt"]["prompt"]["prompt"],
                                out["trainable"]["encoder"]["prompt"]["prompt"]["prompt"])


def test_trainer_stops_at_a_nan_loss_without_saving_it(tmp_path):
  trainer = tiny_trainer(tmp_path, stats_period=10, save_period=1)
  expected = f"NaN/Inf at step 2; .* checkpoint_2 in {re.escape(str(tmp_path))}"
  with pytest.raises(NonFiniteLossError, match=expected):  # the third step (from step 2) sees NaN loss weights
    trainer.train_to(6, batches(nan_at=2))
  assert trainer.step == 3 and saved_steps(tmp_path) == [0, 1, 2]


def test_trainer_saves_and_stops_on_sigterm(tmp_path):
  trainer = tiny_trainer(tmp_path, stats_period=100, save_period=100)
  handler = signal.getsignal(signal.SIGTERM)
  try:
    out = trainer.train_to(10, batches(sigterm_at=2))
  finally:
    signal.signal(signal.SIGTERM, handler)
  assert out["step"] == trainer.position == 3 and saved_steps(tmp_path) == [0, 3]


def test_predictions_with_a_prompt_match_step_by_step_argmax():
  model = prompt_model(length=2)
  b = batch()
  params = nn.meta.unbox(model.get_initial_variables(jax.random.PRNGKey(3), SHAPES)["params"])
  greedy = EncoderDecoderModel(model.module, decode_fn=decoding.temperature_sample,
                               default_decoder_params={"topk": 1, "temperature": 0.0})
  got = np.asarray(greedy.predict_batch(params, b))
  # Reference: feed the sequence so far through the full (non-cached) model, take argmax, stop after EOS (1).
  seq = np.zeros_like(b["decoder_input_tokens"])
  for i in range(seq.shape[1]):
    dec_in = np.pad(seq, ((0, 0), (1, 0)))[:, :-1]
    logits = model.module.apply({"params": params}, b["encoder_input_tokens"], dec_in, np.maximum(seq, 1))
    seq[:, i] = np.argmax(np.asarray(logits[:, i]), axis=-1)
  expected = seq.copy()
  for row in expected:
    eos = np.where(row == 1)[0]
    if len(eos):
      row[eos[0] + 1:] = 0
  np.testing.assert_array_equal(got, expected)
  beams = EncoderDecoderModel(model.module, default_decoder_params={"num_decodes": 3})
  decodes, aux = beams.predict_batch_with_aux(params, b, return_all_decodes=True)
  assert decodes.shape == (4, 3, 4) and np.all(np.diff(np.asarray(aux["scores"]), axis=1) >= 0)


def test_score_batch_is_the_summed_target_log_likelihood():
  model = prompt_model()
  b = batch()
  params = nn.meta.unbox(model.get_initial_variables(jax.random.PRNGKey(0), SHAPES)["params"])
  logits = np.asarray(model.compute_logits(params, b), np.float64)
  peak = logits.max(-1, keepdims=True)
  logp = logits - np.log(np.exp(logits - peak).sum(-1, keepdims=True)) - peak
  target_logp = np.take_along_axis(logp, b["decoder_target_tokens"][..., None], -1)[..., 0]
  expected = (target_logp * b["decoder_loss_weights"]).sum(-1)
  np.testing.assert_allclose(np.asarray(model.score_batch(params, b)), expected, rtol=1e-5)


def _rank_rows(candidates: int) -> dict[str, np.ndarray]:
  """SeqIO rank-classification rows: each example's input repeated once per candidate target, adjacent."""
  b = batch()
  rows = {k: np.repeat(v, candidates, axis=0) for k, v in b.items()}
  targets = np.random.default_rng(5).integers(3, 200, rows["decoder_target_tokens"].shape).astype(np.int32)
  return dict(rows, decoder_target_tokens=targets, decoder_input_tokens=np.pad(targets, ((0, 0), (1, 0)))[:, :-1],
              decoder_loss_weights=np.ones(targets.shape, np.float32))


def test_rank_classification_shares_the_encoder_pass_and_scores_as_row_by_row():
  """The evaluator's scoring finds groups of candidate rows and encodes each example once (`score_candidates`);
  scores equal `score_batch`'s. A batch that breaks the layout is scored row by row."""
  import tensorflow as tf
  from prompt_tuning.runtime.evaluation import InferenceRunner, candidate_group_size
  model = prompt_model()
  params = nn.meta.unbox(model.get_initial_variables(jax.random.PRNGKey(0), SHAPES)["params"])
  rows = _rank_rows(3)  # 4 examples x 3 candidates
  assert candidate_group_size(rows, 12) == 3 and candidate_group_size(rows, 6) == 3
  assert candidate_group_size(rows, 4) == 1  # a group would span two processes
  assert candidate_group_size(batch(), 4) == 1  # every row its own input
  mixed = dict(rows, encoder_input_tokens=rows["encoder_input_tokens"][::-1].copy())
  mixed["encoder_input_tokens"][1] += 1
  assert candidate_group_size(mixed, 12) == 1
  per_row = np.asarray(model.score_batch(params, rows))
  np.testing.assert_allclose(np.asarray(model.score_candidates(params, rows, 3)), per_row, rtol=1e-5, atol=1e-5)

  trainable, frozen = optim.split_trainable(params, [".*prompt.*"])
  runner = InferenceRunner(model, Partitioner(num_partitions=1), batch_size=6)  # 2 batches; the 2nd is shared too
  runner.set_params(trainable, frozen)
  ds = tf.data.Dataset.from_tensor_slices(rows).enumerate()
  scored = runner.score_fn(ds)
  assert [i for i, _ in scored] == list(range(12))
  np.testing.assert_allclose([s for _, s in scored], per_row, rtol=1e-5, atol=1e-5)


def test_real_t5x_checkpoint_tree_equals_model_init_tree(tiny_t5x_checkpoint):
  model = EncoderDecoderModel(EncoderDecoder(get_config("tiny", dtype=jnp.float32)))
  abstract = abstract_params(model)
  ckpt, step = load_params(str(tiny_t5x_checkpoint))
  assert step == 3
  merged = merge_checkpoint_into(abstract, ckpt)  # raises on any missing, extra or mis-shaped parameter
  logits = model.compute_logits(merged, batch())
  assert logits.shape == (4, 4, 32128) and np.all(np.isfinite(np.asarray(logits)))


def test_t5x_style_assignment_map_rules_name_target_paths(tiny_t5x_checkpoint):
  """T5X writes rules against 'target/...' keys; ours match either form."""
  model = EncoderDecoderModel(EncoderDecoder(get_config("tiny", dtype=jnp.float32)))
  abstract = abstract_params(model)
  ckpt, _ = load_params(str(tiny_t5x_checkpoint))
  rules = ((r"target/encoder/layers_1/(.*)", r"target/encoder/layers_0/\1"), (r"target/decoder/decoder_norm/.*", None))
  merged = traverse_util.flatten_dict(merge_checkpoint_into(abstract, ckpt, rules), sep="/")
  np.testing.assert_array_equal(merged["encoder/layers_1/mlp/wo/kernel"],
                                ckpt["encoder"]["layers_0"]["mlp"]["wo"]["kernel"])
  assert isinstance(merged["decoder/decoder_norm/scale"], jax.ShapeDtypeStruct)  # kept for fresh initialisation


def test_tree_mismatch_names_missing_and_extra(tiny_t5x_checkpoint):
  ckpt, _ = load_params(str(tiny_t5x_checkpoint))
  model = EncoderDecoderModel(EncoderDecoder(get_config("tiny", dtype=jnp.float32, num_encoder_layers=3)))
  abstract = abstract_params(model)
  del ckpt["decoder"]["decoder_norm"]
  with pytest.raises(ParamTreeMismatchError) as err:
    merge_checkpoint_into(abstract, ckpt)
  assert "encoder/layers_2" in str(err.value) and "decoder/decoder_norm/scale" in str(err.value)
  wrong = EncoderDecoderModel(EncoderDecoder(get_config("tiny", dtype=jnp.float32, emb_dim=8)))
  mismatch = r"shape mismatch: decoder/decoder_norm/scale: checkpoint \(4,\) vs model \(8,\)"
  with pytest.raises(ParamTreeMismatchError, match=mismatch):
    merge_checkpoint_into(abstract_params(wrong), load_params(str(tiny_t5x_checkpoint))[0])


def test_frozen_weights_from_our_own_orbax_checkpoint(tmp_path, pretrained):
  params = load_t5x_params(str(pretrained))
  ckpt = RunCheckpointer(str(tmp_path / "run"))
  ckpt.save(7, params, {"count": np.int32(0)}, data_position=0)
  ckpt.wait()
  loaded, step = load_params(str(tmp_path / "run"))
  assert step == 7
  for path, value in traverse_util.flatten_dict(params, sep="/").items():
    assert np.array_equal(traverse_util.flatten_dict(loaded, sep="/")[path], value)
  # One variable alone (Orbax partial restore), as the vocabulary-based prompt initialisers read it.
  emb = prompts.t5x_load(str(tmp_path / "run" / "checkpoint_7"), "token_embedder/embedding")()
  np.testing.assert_array_equal(emb, params["token_embedder"]["embedding"])
  assert load_checkpoint_variable(str(tmp_path / "run"), "state/step") == 7
  with pytest.raises(KeyError, match="token_embedder has no 'table'"):
    load_checkpoint_variable(str(tmp_path / "run"), "token_embedder/table")


def test_frozen_weights_from_hugging_face_safetensors(tmp_path, pretrained):
  pytest.importorskip("safetensors")
  from prompt_tuning.runtime.checkpoints.hf import save_hf_t5
  params = load_t5x_params(str(pretrained))
  save_hf_t5(params, get_config("tiny", vocab_size=BYTE_VOCAB_ROWS), tmp_path / "hf")
  loaded, step = load_params(str(tmp_path / "hf"))
  assert step is None
  for path, value in traverse_util.flatten_dict(params, sep="/").items():
    np.testing.assert_array_equal(traverse_util.flatten_dict(loaded, sep="/")[path], value)
  np.testing.assert_array_equal(load_checkpoint_variable(str(tmp_path / "hf"), "decoder/logits_dense/kernel"),
                                params["decoder"]["logits_dense"]["kernel"])
  # Any other single variable is read lazily: the whole-file reader must not be called.
  from prompt_tuning.runtime.checkpoints import hf
  with mock.patch.object(hf, "read_safetensors", side_effect=AssertionError("read the whole file")):
    for path in ("token_embedder/embedding", "encoder/layers_0/attention/query/kernel",
                 "decoder/relpos_bias/rel_embedding", "target/encoder/encoder_norm/scale"):
      keys = path.removeprefix("target/").split("/")
      np.testing.assert_array_equal(load_checkpoint_variable(str(tmp_path / "hf"), path),
                                    functools.reduce(lambda tree, k: tree[k], keys, params))
  with pytest.raises(KeyError, match="encoder/layers_9/mlp/wo/kernel.*is not a parameter"):
    load_checkpoint_variable(str(tmp_path / "hf"), "encoder/layers_9/mlp/wo/kernel")
  # A sharded save (index + shards) is read the same way.
  shard = "model-00001-of-00001.safetensors"
  (tmp_path / "hf" / hf.WEIGHTS_FILE).rename(tmp_path / "hf" / shard)
  names = list(hf._name_map(get_config("tiny", vocab_size=BYTE_VOCAB_ROWS)))  # pylint: disable=protected-access
  (tmp_path / "hf" / hf.INDEX_FILE).write_text(json.dumps({"weight_map": {n: shard for n in names}}))
  with mock.patch.object(hf, "read_safetensors", side_effect=AssertionError("read the whole file")):
    np.testing.assert_array_equal(load_checkpoint_variable(str(tmp_path / "hf"), "token_embedder/embedding"),
                                  params["token_embedder"]["embedding"])


def test_targets_longer_than_the_feature_length_are_counted_and_warned(caplog):
  import cli_tasks  # registers cli_test_task  # noqa: F401
  from prompt_tuning.runtime.configs import DatasetConfig
  from prompt_tuning.runtime.input_pipeline import count_truncated
  cfg = DatasetConfig("cli_test_task", {"inputs": 64, "targets": 3}, "train", batch_size=4)
  with caplog.at_level("WARNING"):
    counts = count_truncated(cfg)
  # Targets are "yes"/"no" + EOS: 4 and 3 byte tokens, so the 24 "yes" examples exceed 3 tokens.
  assert counts == {"inputs": 0, "targets": 24}
  assert "24 of the first 1000 examples" in caplog.text and "TASK_FEATURE_LENGTHS['targets']" in caplog.text
