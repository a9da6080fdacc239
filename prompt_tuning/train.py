r"""Train a prompt (or a whole model) from gin files, T5X style.

  python -m prompt_tuning.train \
    --gin_file=models/t5_1_1_base_prompt.gin --gin_file=prompts/from_class_labels.gin \
    --gin_file=runs/prompt_finetune.gin \
    --gin.MODEL_DIR="'/tmp/model'" --gin.MIXTURE_OR_TASK_NAME="'taskless_glue_sst2_v200_examples'" ...
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import sys
from typing import Any, Callable, Iterator, Sequence

import jax
import optax
import tensorflow as tf

from prompt_tuning import cli, errors
from prompt_tuning.gin_utils import ConfigError
from prompt_tuning.runtime import evaluation, few_shot, input_pipeline, model_dir_claim, optim, summaries
from prompt_tuning.runtime.checkpoints.orbax_io import RunCheckpointer, remove_unfinished_saves
from prompt_tuning.runtime.checkpoints.restore import write_frozen_source
from prompt_tuning.runtime.configs import CheckpointConfig, DatasetConfig, RestoreCheckpointConfig, SaveCheckpointConfig
from prompt_tuning.runtime.models import EncoderDecoderModel
from prompt_tuning.runtime.state_init import RunParams, build_run_params, input_shapes_for
from prompt_tuning.runtime.trainer import Evaluations, Trainer, TrainerConfig


def train(*, model: EncoderDecoderModel, train_dataset_cfg: DatasetConfig,
          train_eval_dataset_cfg: DatasetConfig | None = None,
          infer_eval_dataset_cfg: DatasetConfig | None = None,
          checkpoint_cfg: CheckpointConfig, partitioner: Any, model_dir: str, total_steps: int,
          optimizer: Callable[..., optax.GradientTransformation] = optim.adafactor,
          learning_rate_fn: Callable[[Any], Any] | float = 0.3,
          trainable_regexes: Sequence[str] | None = None, num_microbatches: int | None = None,
          eval_steps: int = 20, eval_period: int | None = 1000, stats_period: int = 100,
          random_seed: int = 0, run_eval_before_training: bool = False,
          relative_steps: int | None = None) -> dict[str, Any]:
  """Run training to the absolute step `total_steps` (or `relative_steps` more); returns the last metrics.
  MODEL_DIR is claimed for the run: a second trainer on it is refused (`runtime/model_dir_claim.py`)."""
  model_dir = str(model_dir)
  with model_dir_claim.claimed(model_dir, jax.process_index()):
    cli.write_config(model_dir)
    init_rng, trainer_rng = jax.random.split(jax.random.PRNGKey(random_seed))
    _check_datasets(partitioner, train_dataset_cfg, train_eval_dataset_cfg, infer_eval_dataset_cfg)
    subsets = input_pipeline.few_shot_subsets(train_dataset_cfg)  # selected once: recorded, then streamed
    few_shot.record_or_check(model_dir, subsets, write=jax.process_index() == 0)
    run = _build_params(model, partitioner, train_dataset_cfg, checkpoint_cfg.restore,
                        _trainable(model, trainable_regexes), init_rng, model_dir)
    tx = optimizer(learning_rate=learning_rate_fn)
    cli.write_config(model_dir)  # again: gin's operative config now includes the optimizer's settings
    save_cfg = checkpoint_cfg.save
    config = TrainerConfig(model_dir, train_dataset_cfg.batch_size, train_dataset_cfg.task_feature_lengths,
                           learning_rate_fn, num_microbatches, stats_period, eval_period, save=save_cfg is not None,
                           save_period=save_cfg.period if save_cfg else None)
    trainer = Trainer(model, tx, run, partitioner, _checkpointer(model_dir, save_cfg, model), config, trainer_rng)
    end_step = trainer.step + relative_steps if relative_steps else total_steps
    if end_step <= trainer.step:
      logging.warning("Nothing to train: the run is at step %d and TRAIN_STEPS=%d (absolute, counting the "
                      "initial checkpoint's steps).", trainer.step, end_step)
    evaluations = _evaluations(model, partitioner, model_dir, train_eval_dataset_cfg, infer_eval_dataset_cfg,
                               eval_steps)
    if run_eval_before_training:
      trainer.evaluate(evaluations)
    batches = input_pipeline.numpy_batches(_dataset(model, train_dataset_cfg, None, subsets), skip=trainer.position)
    result = trainer.train_to(end_step, batches, evaluations)
    trainer.close()
    cli.write_config(model_dir)  # and with what the evaluations configured (decoding)
    return result


def _check_datasets(partitioner: Any, train_cfg: DatasetConfig, *eval_cfgs: DatasetConfig | None) -> None:
  """Fail early on a bad task name, a batch the mesh cannot split; warn about truncated examples."""
  for cfg in (train_cfg, *eval_cfgs):
    if cfg is not None:
      input_pipeline.get_task_or_mixture(cfg.mixture_or_task_name, cfg.module)
  partitioner.check_batch_size(train_cfg.batch_size)
  input_pipeline.count_truncated(train_cfg)


def _build_params(model: EncoderDecoderModel, partitioner: Any, cfg: DatasetConfig,
                  restore: RestoreCheckpointConfig | None, trainable_regexes: Sequence[str], rng: jax.Array,
                  model_dir: str) -> RunParams:
  """The run's parameters, recorded in MODEL_DIR: `model-info.txt`, and `frozen_weights.json` naming the
  checkpoint of the frozen weights."""
  shapes = input_shapes_for(model, cfg.task_feature_lengths, cfg.batch_size)
  run = build_run_params(model, partitioner, shapes, restore, trainable_regexes, rng)
  summaries.write_model_info(model_dir, run.trainable, run.frozen)
  if restore is not None and restore.path and jax.tree_util.tree_leaves(run.frozen) and jax.process_index() == 0:
    write_frozen_source(model_dir, restore.path, restore.step, restore.assignment_map, restore.fallback_to_scratch)
  return run


def _trainable(model: EncoderDecoderModel, regexes: Sequence[str] | None) -> Sequence[str]:
  """TRAINABLE_REGEXES, or else the regexes the model's prompt family declares."""
  regexes = model.family.trainable_regexes if regexes is None else regexes
  if not regexes:
    raise ConfigError("Nothing would train: TRAINABLE_REGEXES is unset and the model's prompt family declares no "
                      "trainable parameters; use a prompt model gin (models/*_prompt.gin) or set TRAINABLE_REGEXES.")
  return regexes


def _checkpointer(model_dir: str, save_cfg: SaveCheckpointConfig | None,
                  model: EncoderDecoderModel) -> RunCheckpointer:
  """Saves every period; each save also exports `save_prompt_regexes` (default: the family's exports) as numpy.
  What interrupted saves left behind is removed first (the caller holds MODEL_DIR)."""
  remove_unfinished_saves(model_dir)
  exports = () if save_cfg is None else save_cfg.save_prompt_regexes
  return RunCheckpointer(model_dir, keep=save_cfg.keep if save_cfg else None,
                         use_async=bool(save_cfg and save_cfg.use_async),
                         export_regexes=model.family.exports if exports is None else exports)


def _evaluations(model: EncoderDecoderModel, partitioner: Any, model_dir: str, train_eval_cfg: DatasetConfig | None,
                 infer_eval_cfg: DatasetConfig | None, eval_steps: int) -> Evaluations:
  """T5X's evaluations: the teacher-forced loss and accuracy on `eval_steps` batches of every subtask of
  `train_eval_cfg` (then the mixture), and `infer_eval_cfg`'s metrics written under `inference_eval/`."""
  evaluator = runner = None
  if infer_eval_cfg is not None:
    evaluator = evaluation.make_evaluator(infer_eval_cfg, model, f"{model_dir}/inference_eval")
    runner = evaluation.InferenceRunner(model, partitioner, infer_eval_cfg.batch_size)
  names = input_pipeline.training_eval_names(train_eval_cfg) if train_eval_cfg else []
  training_eval = {name: functools.partial(
      _eval_batches, model, dataclasses.replace(train_eval_cfg, mixture_or_task_name=name), eval_steps)
      for name in names}
  return Evaluations(training_eval, evaluator, runner)


def _eval_batches(model: EncoderDecoderModel, cfg: DatasetConfig, steps: int) -> Iterator[dict[str, Any]]:
  return input_pipeline.numpy_batches(_dataset(model, cfg, 1).take(steps))


def _dataset(model: EncoderDecoderModel, cfg: DatasetConfig, num_epochs: int | None,
             few_shot_parts: Sequence[tuple[few_shot.Subset, float]] | None = None) -> tf.data.Dataset:
  """This process's shard of the batched model features."""
  return input_pipeline.get_dataset(cfg, model.FEATURE_CONVERTER_CLS(pack=False), jax.process_index(),
                                    jax.process_count(), num_epochs=num_epochs, few_shot_parts=few_shot_parts)


def main(argv: Sequence[str]) -> None:
  result = cli.run_gin_main(argv, train)
  if result and result.get("preempted"):
    logging.warning("Exiting with code %d (preempted and saved): run the same command again to resume.",
                    errors.EXIT_PREEMPTED)
    sys.exit(errors.EXIT_PREEMPTED)


if __name__ == "__main__":
  cli.start(main)
