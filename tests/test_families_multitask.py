"""Multi-task prompts: the reference's four modes, MPT, task ids (sentinel / feature), MPT distillation."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf

from prompt_tuning.data import preprocessors
from prompt_tuning.families import count, distillation, multitask
from prompt_tuning.family import TASK_IDS, PromptFamily, family_of
from prompt_tuning.models import EncoderDecoder
from prompt_tuning.runtime.models import EncoderDecoderModel

from test_families_utils import BATCH, SENTINEL_VOCAB, assert_trains_only_family, config, init, logits

P, TASKS, D = 3, 2, 16
REGEXES = [".*/prompt/.*"]


def inputs(prompt, source: str = "sentinel"):
  return functools.partial(multitask.MultiTaskInputs, prompt, source, SENTINEL_VOCAB)


def family(prompt_factory) -> PromptFamily:
  """As families/multitask.gin builds it."""
  return PromptFamily(prompt_factory, batch_features=[TASK_IDS], logical_axis_rules=multitask.logical_axis_rules())


def model(prompt, source: str = "sentinel") -> EncoderDecoder:
  return EncoderDecoder(config(), family(inputs(prompt, source)))


def distilled(module: EncoderDecoder, files: list[str], **kwargs) -> EncoderDecoderModel:
  """The model with MPT's distillation loss term (families/mpt_distill.gin)."""
  term = distillation.Distillation(files, **kwargs)
  return EncoderDecoderModel(module.clone(family=family_of(module).replace(loss_terms=[term])))


def prompt_params(params: dict) -> dict:
  return jax.tree_util.tree_map(np.asarray, params["encoder"]["prompt"]["prompt"])


def prompts_for(module: EncoderDecoder, params: dict, batch: dict = BATCH) -> np.ndarray:
  """The [B, P, d] prompt each example gets (through the MultiTaskInputs task-id logic)."""
  def run(m, tokens, task_ids):
    out = m.encoder.prompt(tokens, m.token_embedder(tokens), task_ids=task_ids)
    return out[:, :m.encoder.prompt.length]
  return np.asarray(module.apply({"params": params}, batch["encoder_input_tokens"], batch.get("task_ids"),
                                 method=run))


def randomised(params: dict, seed: int = 3) -> dict:
  """Give every task its own non-trivial part."""
  p = params["encoder"]["prompt"]["prompt"]
  keys = jax.random.split(jax.random.PRNGKey(seed), len(p))
  new = {k: v + 0.5 * jax.random.normal(key, v.shape) for key, (k, v) in zip(keys, sorted(p.items()))}
  return {**params, "encoder": {**params["encoder"], "prompt": {"prompt": new}}}


@pytest.mark.parametrize("mode,shared,task,length", [
    ("add", (P, D), (TASKS, P * D), P),
    ("concat", (P, D), (TASKS, 2 * D), P + 2),
    ("concat_features", (P, 6), (TASKS, P * (D - 6)), P),
    ("project", (P, D), (TASKS, D * D + D), P),
])
def test_modes_follow_the_reference_definitions(mode, shared, task, length):
  kw = {"task_length": 2} if mode == "concat" else {"shared_features": 6} if mode == "concat_features" else {}
  module = model(multitask.MultiTaskPrompt(P, TASKS, mode, **kw))
  params = randomised(init(module))
  p = prompt_params(params)
  s, t = p["shared_prompt"], p["task_prompts"]
  assert s.shape == shared and t.shape == task
  out = prompts_for(module, params)
  ids = SENTINEL_VOCAB - 1 - np.asarray(BATCH["encoder_input_tokens"][:, 0])  # 60 -> task 1, 61 -> task 0
  assert out.shape == (4, length, D) and list(ids) == [1, 0, 1, 0]
  for b, k in enumerate(ids):
    if mode == "add":
      expected = s + t[k].reshape(P, D)
    elif mode == "concat":
      expected = np.concatenate([s, t[k].reshape(2, D)])
    elif mode == "concat_features":
      expected = np.concatenate([s, t[k].reshape(P, D - 6)], axis=1)
    else:
      expected = s @ t[k][:D * D].reshape(D, D) + t[k][D * D:]
    np.testing.assert_allclose(out[b], expected, atol=1e-5)
  assert count.parameter_counts(module, REGEXES)[0] == s.size + t.size


def test_mpt_is_shared_prompt_times_a_low_rank_task_matrix():
  module = model(multitask.MPTPrompt(P, TASKS, rank=2))
  params = init(module)
  p = prompt_params(params)
  assert p["task_u"].shape == (TASKS, P, 2) and p["task_v"].shape == (TASKS, 2, D)
  np.testing.assert_allclose(prompts_for(module, params), np.broadcast_to(p["shared_prompt"], (4, P, D)),
                             rtol=0.2)  # starts near the shared prompt
  params = randomised(params)
  p = prompt_params(params)
  out = prompts_for(module, params)
  for b, k in enumerate([1, 0, 1, 0]):
    np.testing.assert_allclose(out[b], p["shared_prompt"] * (p["task_u"][k] @ p["task_v"][k]), atol=1e-5)
  assert count.parameter_counts(module, REGEXES)[0] == P * D + TASKS * (P * 2 + 2 * D)


def test_sentinel_is_stripped_and_masks_keep_padding_out():
  module = model(multitask.MultiTaskPrompt(P, TASKS, "add"))
  params = randomised(init(module))
  tokens = BATCH["encoder_input_tokens"]
  encoded = module.apply({"params": params}, tokens, method=module.encode)
  assert encoded.shape == (4, P + tokens.shape[1] - 1, D)
  mask = np.asarray(module.apply({"params": params}, tokens, method=lambda m, t: m.encoder.mask_tokens(t)))
  np.testing.assert_array_equal(mask[:, :P], 1)
  np.testing.assert_array_equal(mask[:, P:], np.asarray(tokens[:, 1:]))
  assert np.all(np.asarray(encoded)[mask == 0] == 0.0)
  longer = dict(BATCH, encoder_input_tokens=jnp.pad(tokens, ((0, 0), (0, 3))))
  real = np.asarray(BATCH["decoder_target_tokens"] > 0)
  np.testing.assert_allclose(logits(module, params, longer)[real], logits(module, params)[real], atol=1e-5)


def test_out_of_range_task_ids_give_nan_not_a_wrong_prompt():
  module = model(multitask.MultiTaskPrompt(P, TASKS, "add"))
  params = init(module)
  bad = dict(BATCH, encoder_input_tokens=BATCH["encoder_input_tokens"].at[0, 0].set(50))  # task 11 of 2
  out = prompts_for(module, params, bad)
  assert np.all(np.isnan(out[0])) and np.all(np.isfinite(out[1:]))


def test_task_ids_from_the_feature():
  module = model(multitask.MultiTaskPrompt(P, TASKS, "add"), source="feature")
  params = randomised(init(module))  # init works without the feature (shape-only call)
  ids = jnp.array([[1], [0], [0], [1]], jnp.int32)
  out = prompts_for(module, params, dict(BATCH, task_ids=ids))
  np.testing.assert_allclose(out[1], out[2])
  np.testing.assert_allclose(out[0], out[3])
  assert not np.allclose(out[0], out[1])
  encoded = module.apply({"params": params}, BATCH["encoder_input_tokens"], False, {"task_ids": ids},
                         method=module.encode)
  assert encoded.shape == (4, P + 8, D)  # nothing is stripped
  with pytest.raises(ValueError, match="needs a `task_ids` feature"):
    logits(module, params)


def test_feature_converter_passes_task_ids_through():
  ds = tf.data.Dataset.from_tensors({"inputs": tf.constant([5, 6, 1]), "targets": tf.constant([7, 1]),
                                     "task_ids": tf.constant([1])})
  model_ = EncoderDecoderModel(model(multitask.MPTPrompt(P, TASKS), "feature"))
  plain = EncoderDecoderModel(EncoderDecoder(config()))
  assert plain.FEATURE_CONVERTER_CLS is seqio.EncDecFeatureConverter  # a model without the feature is untouched
  converted = model_.FEATURE_CONVERTER_CLS(pack=False)(ds, {"inputs": 4, "targets": 3, "task_ids": 1})
  ex = next(converted.as_numpy_iterator())
  assert ex["task_ids"].tolist() == [1] and ex["encoder_input_tokens"].tolist() == [5, 6, 1, 0]
  without = model_.FEATURE_CONVERTER_CLS(pack=False)(ds.map(lambda x: {k: x[k] for k in ("inputs", "targets")}),
                                                     {"inputs": 4, "targets": 3})
  assert "task_ids" not in next(without.as_numpy_iterator())  # tasks without ids convert as usual
  ds = preprocessors.add_task_ids(tf.data.Dataset.from_tensors({"inputs": tf.constant([5])}), 3)
  assert next(ds.as_numpy_iterator())["task_ids"].tolist() == [3]


def test_mpt_trains_alone():
  assert_trains_only_family(model(multitask.MPTPrompt(P, TASKS)), REGEXES)


def test_mpt_distillation_from_single_task_teachers(tmp_path):
  module = model(multitask.MPTPrompt(P, TASKS))
  params = init(module)
  # Teachers equal to what the student gives each task: no distillation loss.
  per_task = prompts_for(module, params)
  files = [str(tmp_path / f"task{k}.npy") for k in range(TASKS)]
  np.save(files[0], per_task[1]), np.save(files[1], per_task[0])  # rows 1 and 0 are tasks 0 and 1
  distill = distilled(module, files)
  total, metrics = distill.loss_fn(params, BATCH, None)
  assert abs(float(metrics["distill/kl"])) < 1e-4 and float(metrics["distill/hidden_mse"]) < 1e-8
  np.testing.assert_allclose(float(total), float(metrics["distill/cross_ent_loss"]), rtol=1e-5)
  # Other teachers: the distillation terms are positive and training lowers the total loss.
  rng = np.random.default_rng(0)
  for f in files:
    np.save(f, rng.uniform(-0.5, 0.5, (P, D)).astype(np.float32))
  distillation._load_teachers.cache_clear()
  make = lambda m: distilled(m, files, hidden_weight=10.0)
  _, metrics = make(module).loss_fn(params, BATCH, None)
  assert float(metrics["distill/kl"]) > 1e-3 and float(metrics["distill/hidden_mse"]) > 1e-3
  # (test_families_cli trains with distillation.)
  np.save(files[0], np.zeros((P + 1, D), np.float32))
  distillation._load_teachers.cache_clear()
  with pytest.raises(ValueError, match="one shape"):
    make(module)
  np.save(files[0], np.zeros((P, D), np.float32))
  distillation._load_teachers.cache_clear()
  with pytest.raises(ValueError, match="PROMPT_FACTORY = @multitask.MultiTaskInputs"):
    distilled(EncoderDecoder(config()), files).loss_fn(params, BATCH, None)


def test_language_task_prompt_reads_two_sentinels_and_concatenates_the_factors():
  """Factorised multilingual prompts: first token = language, second = task; both dropped; the prompt is the
  language's rows then the task's rows, so examples sharing a language share the first part."""
  prompt = multitask.LanguageTaskPrompt(lang_length=2, task_length=3, num_langs=2, num_tasks=2)
  module = EncoderDecoder(config(), family(functools.partial(multitask.MultiTaskInputs, prompt, "sentinel",
                                                             SENTINEL_VOCAB, lang_source="sentinel")))
  # (language, task) per example: (0, 1), (1, 0), (0, 0), (1, 1); sentinel k = SENTINEL_VOCAB - 1 - k.
  pairs = [(0, 1), (1, 0), (0, 0), (1, 1)]
  ids = jnp.array([[SENTINEL_VOCAB - 1 - l, SENTINEL_VOCAB - 1 - t] for l, t in pairs], jnp.int32)
  tokens = jnp.concatenate([ids, BATCH["encoder_input_tokens"][:, 1:]], axis=1)
  batch = dict(BATCH, encoder_input_tokens=tokens)
  params = randomised(init(module, batch=batch))
  got = prompts_for(module, params, batch)
  table = prompt_params(params)
  assert table["lang_prompts"].shape == (2, 2 * D) and table["task_prompts"].shape == (2, 3 * D)
  for row, (lang, task) in enumerate(pairs):
    np.testing.assert_allclose(got[row, :2], table["lang_prompts"][lang].reshape(2, D), rtol=1e-6)
    np.testing.assert_allclose(got[row, 2:], table["task_prompts"][task].reshape(3, D), rtol=1e-6)
  encoded = module.apply({"params": params}, tokens, method=module.encode)
  assert encoded.shape == (4, 5 + tokens.shape[1] - 2, D)
  mask = np.asarray(module.apply({"params": params}, tokens, method=lambda m, t: m.encoder.mask_tokens(t)))
  np.testing.assert_array_equal(mask[:, 5:], np.asarray(tokens[:, 2:]))
  with pytest.raises(ValueError, match=r"Unknown lang_source 'first'"):
    multitask.MultiTaskInputs(prompt, lang_source="first")
