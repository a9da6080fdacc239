"""Family gin files: each builds the model it documents; one short `prompt_tuning.train` run per family.

The CLI runs import this module (MIXTURE_OR_TASK_MODULE='test_families_cli') for two-task versions of the CLI
test task: task 1 answers the opposite of task 0, so only task-specific prompts can fit both.
"""
from __future__ import annotations

import functools
import pathlib
import re
from typing import Sequence

import numpy as np
import pytest
import seqio
import tensorflow as tf
from flax import traverse_util

import cli_tasks
from cli_utils import MODEL_FLAGS, TESTS_DIR, run_cli, write_tiny_t5x_checkpoint
from prompt_tuning.data import preprocessors as pt_preprocessors
from prompt_tuning.families import count, distillation
from prompt_tuning.family import TASK_IDS
from prompt_tuning.runtime import feature_converters, summaries

BYTE_VOCAB_SIZE = cli_tasks.VOCAB.vocab_size  # sentinel <extra_id_k> = BYTE_VOCAB_SIZE - 1 - k
LENGTHS = {"inputs": 12, "targets": 4}


def _flip(ds: tf.data.Dataset) -> tf.data.Dataset:
  return ds.map(lambda ex: {**ex, "targets": tf.where(ex["targets"] == "yes", "no", "yes")})


def _register() -> None:
  base = seqio.get_mixture_or_task("cli_test_task")
  features = dict(base.output_features)
  for k in (0, 1):
    steps = [_flip] if k else []
    seqio.TaskRegistry.remove(f"families_cli_ids_{k}")
    seqio.TaskRegistry.add(
        f"families_cli_ids_{k}", source=base.source, metric_fns=base.metric_fns,
        output_features={**features, TASK_IDS: pt_preprocessors.TASK_IDS_FEATURE},
        preprocessors=[*steps, seqio.preprocessors.tokenize,
                       functools.partial(pt_preprocessors.add_task_ids, task_id=k),
                       seqio.preprocessors.append_eos_after_trim])
    seqio.TaskRegistry.remove(f"families_cli_sentinel_{k}")
    seqio.TaskRegistry.add(
        f"families_cli_sentinel_{k}", source=base.source, metric_fns=base.metric_fns, output_features=features,
        preprocessors=[*steps, seqio.preprocessors.tokenize,
                       functools.partial(pt_preprocessors.add_sentinel_to_beginning, offset=k),
                       seqio.preprocessors.append_eos_after_trim])
    for lang in (0, 1):  # factorised multilingual prompts: a language and a task sentinel in front
      name = f"families_cli_lang{lang}_{k}"
      seqio.TaskRegistry.remove(name)
      seqio.TaskRegistry.add(
          name, source=base.source, metric_fns=base.metric_fns, output_features=features,
          preprocessors=[seqio.preprocessors.tokenize,  # one answer for all: the ids, not the data, differ
                         functools.partial(pt_preprocessors.add_language_and_task_sentinels, language=lang, task=k),
                         seqio.preprocessors.append_eos_after_trim])
  seqio.MixtureRegistry.remove("families_cli_multilingual")
  seqio.MixtureRegistry.add("families_cli_multilingual",
                            [f"families_cli_lang{lang}_{k}" for lang in (0, 1) for k in (0, 1)], default_rate=1.0)
  for kind in ("ids", "sentinel"):
    seqio.MixtureRegistry.remove(f"families_cli_{kind}")
    seqio.MixtureRegistry.add(f"families_cli_{kind}", [f"families_cli_{kind}_{k}" for k in (0, 1)], default_rate=1.0)


_register()


# ------------------------------------------------------------------------------------------- gin files
def family_gin(name: str, *bindings: str):
  return count.configured_model(["models/t5_1_1_tiny_prompt.gin", f"families/{name}.gin", "byte_vocab_tiny.gin"],
                                ["PROMPT_LENGTH=3", *bindings], [str(TESTS_DIR / "gin")])


@pytest.mark.parametrize("name,bindings,marker", [
    ("instance_pooled", ["INSTANCE_PHM=2"], "encoder/prompt/prompt/generator/up/phm_rule"),
    ("instance_encoder", [], "encoder/prompt/prompt/generator/down/kernel"),
    ("instance_token", [], "encoder/prompt/prompt/generator/queries"),
    ("multitask", ["MULTITASK_MODE='project'"], "encoder/prompt/prompt/task_prompts"),
    ("mpt", ["MPT_RANK=2"], "encoder/prompt/prompt/task_u"),
    ("layer_prompts", [], "encoder/layer_prompts/prompt"),
    ("prefix", ["PREFIX_HIDDEN_DIM=8"], "decoder/prefix/encoder_decoder_attention_mlp_out/kernel"),
])
def test_family_gin_trains_exactly_the_family_parameters(name, bindings, marker):
  with family_gin(name, *bindings) as (model, regexes):
    module = model.module
    params = count.abstract_params(module)
    added = set(traverse_util.flatten_dict(params, sep="/")) - set(
        traverse_util.flatten_dict(count.abstract_params(count.without_prompts(module)), sep="/"))
    trainable, _ = count.parameter_counts(module, regexes)
    added_size = sum(int(np.prod(v.shape)) for k, v in traverse_util.flatten_dict(params, sep="/").items()
                     if k in added)
    assert marker in added and trainable == added_size
    assert module.family.encoder_first_pass == (name == "instance_encoder")


def test_mpt_distill_gin_wraps_the_model(tmp_path):
  files = [str(tmp_path / f"t{k}.npy") for k in (0, 1)]
  for f in files:
    np.save(f, np.zeros((3, 4), np.float32))
  with family_gin("mpt_distill", f"TEACHER_PROMPT_FILES={files}", "NUM_TASKS=2") as (model, _):
    (term,) = model.family.loss_terms
    assert isinstance(term, distillation.Distillation)
    converter = model.FEATURE_CONVERTER_CLS(pack=False)  # passes the task ids through
    assert isinstance(converter, feature_converters.PassThroughEncDecFeatureConverter)
    assert converter._features == (TASK_IDS,)


# ------------------------------------------------------------------------------------------- CLI runs
@pytest.fixture(scope="module")
def frozen_checkpoint(tmp_path_factory) -> pathlib.Path:
  return write_tiny_t5x_checkpoint(tmp_path_factory.mktemp("pretrained"))


def train(tmp_path: pathlib.Path, ckpt: pathlib.Path, families: Sequence[str], *extra: str,
          task: str = "cli_test_task", lengths: dict | None = None, steps: int = 16):
  """Train `steps` steps with model gin, family gins, run gin; the loss must fall. Returns the model dir and the
  names of the exported (trainable) arrays."""
  model_dir = tmp_path / "run"
  flags = [*MODEL_FLAGS, *[f"--gin_file=families/{f}.gin" for f in families],
           "--gin_file=runs/prompt_finetune.gin",
           f"--gin.MIXTURE_OR_TASK_NAME='{task}'", "--gin.MIXTURE_OR_TASK_MODULE='test_families_cli'",
           f"--gin.TASK_FEATURE_LENGTHS={lengths or LENGTHS}", f"--gin.MODEL_DIR='{model_dir}'",
           f"--gin.INITIAL_CHECKPOINT_PATH='{ckpt}'", f"--gin.TRAIN_STEPS={3 + steps}", "--gin.BATCH_SIZE=8",
           "--gin.PROMPT_LENGTH=3", f"--gin.STATS_PERIOD={steps // 2}", f"--gin.SAVE_PERIOD={steps}",
           "--gin.EVAL_PERIOD=0", "--gin.DROPOUT_RATE=0.0", *extra]
  proc = run_cli("train", flags, tmp_path)
  losses = [float(x) for x in re.findall(r"step \d+/\d+ +loss ([\d.]+)", proc.stderr)]
  assert len(losses) == 2 and losses[1] < losses[0], proc.stderr[-3000:]
  exported = model_dir / "numpy_checkpoints" / f"checkpoint_{3 + steps}"
  return model_dir, {p.name for p in exported.iterdir() if not p.name.endswith(".npy")}


def test_instance_and_deep_families_train_together_from_the_cli(tmp_path, frozen_checkpoint):
  """One run for three families: an IPT encoder-pass generator (PHM weights) makes the input prompt, per-layer
  prompts replace its positions in later layers, and MLP-reparameterised prefixes sit in every attention."""
  regexes = [".*/prompt/.*", ".*/layer_prompts/.*", ".*/prefix/.*"]
  families = ["instance_encoder", "layer_prompts", "prefix"]
  model_flags = ["--gin.PROMPT_FACTORY=@prompts.PromptedInputs", f"--gin.PROMPT_REGEX={regexes}",
                 "--gin.INSTANCE_PHM=2", "--gin.INSTANCE_HIDDEN_DIM=8", "--gin.PREFIX_HIDDEN_DIM=8"]
  model_dir, exported = train(tmp_path, frozen_checkpoint, families, *model_flags, "--gin.LEARNING_RATE=0.02")
  assert {"encoder.prompt.prompt.prompt", "encoder.prompt.prompt.generator.up.phm_rule",
          "encoder.layer_prompts.prompt", "encoder.prefix.attention_embedding",
          "decoder.prefix.self_attention_mlp_out.kernel", "decoder.prefix.encoder_decoder_attention_mlp_in.bias"
          } <= exported
  assert all(re.fullmatch(r"encoder\.(prompt|layer_prompts)\..*|(en|de)coder\.prefix\..*", n) for n in exported)

  # The prefixes in their final form, through the export CLI: the MLP applied to the embedding, laid out
  # [layers, keys/values, P, heads * head_dim] (tiny model: 2 layers, 2 heads of 2).
  numpy_dir = model_dir / "numpy_checkpoints" / "checkpoint_19"
  out_dir = tmp_path / "prefixes"
  export_flags = [*MODEL_FLAGS, *[f"--gin_file=families/{f}.gin" for f in families], *model_flags,
                  "--gin_file=runs/export_prefixes.gin", "--gin.PROMPT_LENGTH=3",
                  f"--gin.NUMPY_CHECKPOINT_DIR='{numpy_dir}'", f"--gin.PREFIX_OUTPUT_DIR='{out_dir}'"]
  run_cli("scripts.export_prefixes", export_flags, tmp_path)
  for stack, attention in [("encoder", "attention"), ("decoder", "self_attention"),
                           ("decoder", "encoder_decoder_attention")]:
    w = lambda name: np.load(numpy_dir / f"{stack}.prefix.{attention}{name}.npy")
    hidden = np.tanh(w("_embedding") @ w("_mlp_in.kernel") + w("_mlp_in.bias"))
    expected = (hidden @ w("_mlp_out.kernel") + w("_mlp_out.bias")).reshape(3, 2, 2, 4).transpose(1, 2, 0, 3)
    np.testing.assert_allclose(np.load(out_dir / f"{attention}.npy"), expected, rtol=1e-5, atol=1e-6)
  wrong = run_cli("scripts.export_prefixes", [*export_flags, "--gin.PREFIX_HIDDEN_DIM=16"], tmp_path, check=False)
  assert wrong.returncode != 0 and "do not match the gin-configured model" in wrong.stderr, wrong.stderr[-2000:]


def test_mpt_distillation_with_task_id_features_from_the_cli(tmp_path, frozen_checkpoint):
  files = [str(tmp_path / f"teacher{k}.npy") for k in (0, 1)]
  for k, f in enumerate(files):
    np.save(f, np.random.default_rng(k).uniform(-0.5, 0.5, (3, 4)).astype(np.float32))
  model_dir, exported = train(
      tmp_path, frozen_checkpoint, ["mpt_distill"], f"--gin.TEACHER_PROMPT_FILES={files}", "--gin.NUM_TASKS=2",
      "--gin.TASK_SOURCE='feature'", "--gin.EVAL_PERIOD=16", task="families_cli_ids",
      lengths={**LENGTHS, "task_ids": 1})
  assert {"encoder.prompt.prompt.shared_prompt", "encoder.prompt.prompt.task_u"} <= exported
  for k in (0, 1):  # inference eval reads the task ids too
    assert (model_dir / "inference_eval" / f"families_cli_ids_{k}-metrics.jsonl").exists()
  # Training evaluation as T5X: each subtask of the mixture, then the mixture itself.
  for name in ("families_cli_ids_0", "families_cli_ids_1", "families_cli_ids"):
    scalars = summaries.read_scalars(model_dir / "training_eval" / name)
    assert [step for step, _ in scalars["loss"]] == [19], (name, scalars)


def test_factorised_multilingual_prompts_from_the_cli(tmp_path, frozen_checkpoint):
  """families/multilingual.gin on a 2-language x 2-task mixture (two sentinels per input): the loss falls, and
  the run trains and exports exactly the language and task tables."""
  _, exported = train(tmp_path, frozen_checkpoint, ["multilingual"], "--gin.NUM_TASKS=2", "--gin.NUM_LANGS=2",
                      "--gin.LANG_PROMPT_LENGTH=2", "--gin.TASK_PROMPT_LENGTH=2",
                      f"--gin.SENTINEL_VOCAB_SIZE={BYTE_VOCAB_SIZE}", task="families_cli_multilingual")
  assert exported == {"encoder.prompt.prompt.lang_prompts", "encoder.prompt.prompt.task_prompts"}
