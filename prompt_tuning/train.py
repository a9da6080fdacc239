r"""Train a prompt (or a whole model) from gin files, T5X style.

  python -m prompt_tuning.train \
    --gin_file=models/t5_1_1_base_prompt.gin --gin_file=prompts/from_class_labels.gin \
    --gin_file=runs/prompt_finetune.gin \
    --gin.MODEL_DIR="'/tmp/model'" --gin.MIXTURE_OR_TASK_NAME="'taskless_glue_sst2_v200_examples'" ...
"""
from __future__ import annotations

import dataclasses
import logging
import signal
from typing import Any, Callable, Sequence

import jax
import numpy as np
import optax

from prompt_tuning import cli
from prompt_tuning.runtime import evaluation, input_pipeline, optim, summaries
from prompt_tuning.runtime.checkpoints.orbax_io import RunCheckpointer
from prompt_tuning.runtime.checkpoints.restore import write_frozen_source
from prompt_tuning.runtime.configs import CheckpointConfig, DatasetConfig
from prompt_tuning.runtime.models import EncoderDecoderModel
from prompt_tuning.runtime.state_init import build_run_params, input_shapes_for
from prompt_tuning.runtime.trainer import TrainState, make_eval_step, make_train_step, partition_train_step


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN or Inf loss."""


class _Preemption:
  """SIGTERM (preemption) asks the loop to save and stop at the next step."""

  def __init__(self):
    self.requested = False
    try:
      signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not in the main thread
      pass

  def _handle(self, *_):
    self.requested = True



def _on_all_devices(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Leaves held by one local device (e.g. optimizer counters, which jit returns as constants) made replicated
  over the mesh: with several processes Orbax saves only global arrays."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def place(x):
    if len(x.sharding.device_set) == mesh.size:
      return x
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, replicated, lambda idx: value[idx])
  return jax.tree_util.tree_map(place, tree)


def train(*, model: EncoderDecoderModel, train_dataset_cfg: DatasetConfig,
          train_eval_dataset_cfg: DatasetConfig | None = None,
          infer_eval_dataset_cfg: DatasetConfig | None = None,
          checkpoint_cfg: CheckpointConfig, partitioner: Any, model_dir: str, total_steps: int,
          optimizer: Callable[..., optax.GradientTransformation] = optim.adafactor,
          learning_rate_fn: Callable[[Any], Any] | float = 0.3,
          trainable_regexes: Sequence[str] = (".*/prompt/.*",), num_microbatches: int | None = None,
          eval_steps: int = 20, eval_period: int | None = 1000, stats_period: int = 100,
          random_seed: int = 0, run_eval_before_training: bool = False,
          relative_steps: int | None = None) -> dict[str, Any]:
  """Run training to the absolute step `total_steps` (or `relative_steps` more); returns the last metrics."""
  model_dir = str(model_dir)
  cli.write_config(model_dir)
  init_rng, trainer_rng = jax.random.split(jax.random.PRNGKey(random_seed))
  for cfg in (train_dataset_cfg, train_eval_dataset_cfg, infer_eval_dataset_cfg):
    if cfg is not None:
      input_pipeline.get_task_or_mixture(cfg.mixture_or_task_name, cfg.module)  # fail early on a bad name
  partitioner.check_batch_size(train_dataset_cfg.batch_size)
  input_pipeline.count_truncated(train_dataset_cfg)

  shapes = input_shapes_for(train_dataset_cfg.task_feature_lengths, train_dataset_cfg.batch_size)
  run = build_run_params(model, partitioner, shapes, checkpoint_cfg.restore, trainable_regexes, init_rng)
  summaries.write_model_info(model_dir, run.trainable, run.frozen)
  restore = checkpoint_cfg.restore
  if restore is not None and restore.path and jax.tree_util.tree_leaves(run.frozen) and jax.process_index() == 0:
    write_frozen_source(model_dir, restore.path, restore.step, restore.assignment_map, restore.fallback_to_scratch)
  tx = optimizer(learning_rate=learning_rate_fn)
  cli.write_config(model_dir)  # again: gin's operative config now includes the optimizer's settings
  save_cfg = checkpoint_cfg.save
  checkpointer = RunCheckpointer(model_dir, keep=save_cfg.keep if save_cfg else None,
                                 use_async=bool(save_cfg and save_cfg.use_async),
                                 export_regexes=save_cfg.save_prompt_regexes if save_cfg else ())

  init_step = run.checkpoint_step or 0
  opt_state = jax.jit(tx.init)(run.trainable)
  opt_state = _on_all_devices(optim.set_optimizer_step(opt_state, init_step) if init_step else opt_state,
                              partitioner.mesh)
  abstract_opt = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), opt_state)
  abstract_target = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), run.trainable)
  restored = checkpointer.restore(abstract_target, abstract_opt)
  if restored is not None:  # resuming from MODEL_DIR beats INITIAL_CHECKPOINT_PATH (T5X order)
    trainable, opt_state, step, position = restored
    logging.info("Resuming from %s/checkpoint_%d (data position %d).", model_dir, step, position)
  else:
    trainable, position, step = run.trainable, 0, init_step
  state = TrainState(step=np.int32(step), params=trainable, opt_state=opt_state,
                     first_nonfinite_step=np.int32(-1))
  end_step = step + relative_steps if relative_steps else total_steps
  if end_step <= step:
    logging.warning("Nothing to train: the run is at step %d and TRAIN_STEPS=%d (absolute, counting the "
                    "initial checkpoint's steps).", step, end_step)

  train_step, state = partition_train_step(
      make_train_step(model, tx, num_microbatches, dropout=model.module.config.dropout_rate > 0), state,
      run.frozen, run.frozen_shardings, partitioner)
  eval_step = jax.jit(make_eval_step(model))
  writers = summaries.RunWriters(model_dir)
  if save_cfg is not None and restored is None:
    checkpointer.save(step, state.params, state.opt_state, position)  # T5X saves before the first step

  evaluator = runner = None
  if infer_eval_dataset_cfg is not None:
    evaluator = evaluation.make_evaluator(infer_eval_dataset_cfg, model, f"{model_dir}/inference_eval")
    runner = evaluation.InferenceRunner(model, partitioner, infer_eval_dataset_cfg.batch_size)

  train_eval_names = input_pipeline.training_eval_names(train_eval_dataset_cfg) if train_eval_dataset_cfg else []

  def training_eval(name: str) -> dict[str, float] | None:
    """Teacher-forced loss/accuracy on `eval_steps` batches of one task (or the mixture), as T5X."""
    cfg = dataclasses.replace(train_eval_dataset_cfg, mixture_or_task_name=name)
    ds = input_pipeline.get_dataset(cfg, model.FEATURE_CONVERTER_CLS(pack=False), jax.process_index(),
                                    jax.process_count(), num_epochs=1)
    sums, n = None, 0
    with partitioner.activation_rules_context():
      for batch in input_pipeline.numpy_batches(ds.take(eval_steps)):
        m = eval_step(state.params, run.frozen, partitioner.shard_batch(batch))
        sums = m if sums is None else jax.tree_util.tree_map(lambda a, b: a + b, sums, m)
        n += 1
    return {k: float(v) / n for k, v in jax.device_get(sums).items()} if n else None

  def evaluate(at_step: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in train_eval_names:  # every subtask of a mixture, then the mixture (T5X)
      te = training_eval(name)
      if te is not None:
        writers.write_scalars("training_eval/" + name[:113], at_step, te)
        results.setdefault("training_eval", {})[name] = te
    if evaluator is not None:
      runner.set_params(state.params, run.frozen)
      results["inference_eval"] = evaluation.run_evaluation(evaluator, runner, at_step)
    return results

  last_eval: dict[str, Any] = {}
  if run_eval_before_training:
    last_eval = evaluate(step)

  ds = input_pipeline.get_dataset(train_dataset_cfg, model.FEATURE_CONVERTER_CLS(pack=False),
                                  jax.process_index(), jax.process_count(), num_epochs=None)
  batches = input_pipeline.numpy_batches(ds, skip=position)
  preemption = _Preemption()
  lengths, batch_size = train_dataset_cfg.task_feature_lengths, train_dataset_cfg.batch_size
  progress = summaries.Progress(start_step=step, end_step=end_step, tokens_per_step=batch_size * sum(lengths.values()),
                                batch_size=batch_size, target_tokens_per_step=batch_size * lengths["targets"],
                                num_devices=jax.device_count())
  period = save_cfg.period if save_cfg and save_cfg.period else None
  metrics_sum, metrics_count = None, 0
  last_good_saved = checkpointer.latest_step()

  def check_finite() -> None:
    bad = int(jax.device_get(state.first_nonfinite_step))
    if bad >= 0:
      raise NonFiniteLossError(
          f"The loss became NaN/Inf at step {bad}; training stopped without saving that state. The last good "
          f"checkpoint is checkpoint_{last_good_saved} in {model_dir}. Lower the learning rate or check the data.")

  first_step = step  # periods count from here, as T5X
  with partitioner.activation_rules_context():
    while step < end_step:
      batch = partitioner.shard_batch(next(batches))
      state, metrics = train_step(state, run.frozen, batch, trainer_rng)
      step += 1
      position += 1
      metrics_sum = metrics if metrics_sum is None else jax.tree_util.tree_map(lambda a, b: a + b, metrics_sum,
                                                                             metrics)
      metrics_count += 1
      final = step == end_step or preemption.requested
      if (step - first_step) % stats_period == 0 or final:
        check_finite()
        averaged = {k: float(v) / metrics_count for k, v in jax.device_get(metrics_sum).items()}
        progress.log(step, averaged)
        lr = float(learning_rate_fn(step) if callable(learning_rate_fn) else learning_rate_fn)
        writers.write_scalars("train", step, {**averaged, **progress.timing(step), "learning_rate": lr,
                                              "learning_rate/current": lr})
        metrics_sum, metrics_count = None, 0
      if save_cfg is not None and ((period and (step - first_step) % period == 0) or final):
        check_finite()
        checkpointer.save(step, state.params, state.opt_state, position)
        last_good_saved = step
      if eval_period and ((step - first_step) % eval_period == 0 or final):
        last_eval = evaluate(step)
      if preemption.requested:
        logging.warning("Preempted (SIGTERM): saved at step %d and stopping.", step)
        break
  checkpointer.wait()
  writers.close()
  cli.write_config(model_dir)  # and with what the evaluations configured (decoding)
  return {"step": step, "eval": last_eval, "trainable": state.params, "frozen": run.frozen}


def main(argv: Sequence[str]) -> None:
  cli.run_gin_main(argv, train)


if __name__ == "__main__":
  cli.start(main)
