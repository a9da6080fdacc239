"""Inference over SeqIO datasets (predict / score) and the `seqio.Evaluator` wiring, T5X style."""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

import jax
from jax.experimental import multihost_utils
import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning.family import TASK_IDS, PromptFamily
from prompt_tuning.runtime.configs import DatasetConfig
from prompt_tuning.runtime.models import EncoderDecoderModel
from prompt_tuning.runtime.optim import merge_trainable

MODEL_FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                  "decoder_causal_attention", TASK_IDS)


def batched_indexed(ds: tf.data.Dataset, batch_size: int):
  """Yield (indices [B], features {name: [B, L]}) from an enumerated dataset, padding the last batch (index -1)."""
  rows: list[tuple[int, Mapping[str, np.ndarray]]] = []
  for idx, ex in ds.as_numpy_iterator():
    rows.append((int(idx), ex))
    if len(rows) == batch_size:
      yield _stack(rows)
      rows = []
  if rows:
    pad = [(-1, rows[0][1])] * (batch_size - len(rows))
    yield _stack(rows + pad)


def _stack(rows):
  idx = np.array([r[0] for r in rows], np.int64)
  feats = {k: np.stack([r[1][k] for r in rows]) for k in rows[0][1] if k in MODEL_FEATURES}
  return idx, feats


class InferenceRunner:
  """Jitted predict and score functions over the current (trainable, frozen) parameters."""

  def __init__(self, model: EncoderDecoderModel, partitioner: Any, batch_size: int,
               decoder_params: Mapping[str, Any] | None = None):
    self.model = model
    self.partitioner = partitioner
    self.batch_size = batch_size
    self.trainable = None
    self.frozen = None

    def predict(trainable, frozen, batch, rng):
      params = merge_trainable(trainable, frozen)
      return model.predict_batch_with_aux(params, batch, rng, decoder_params=decoder_params)

    def score(trainable, frozen, batch):
      return model.score_batch(merge_trainable(trainable, frozen), batch)

    self._predict = jax.jit(predict)
    self._score = jax.jit(score)

  def set_params(self, trainable: Any, frozen: Any) -> None:
    self.trainable, self.frozen = trainable, frozen

  def _run(self, ds: tf.data.Dataset, fn: Callable[[dict], Any]) -> list[tuple[int, Any]]:
    """`fn` over global batches of `ds`; returns (example index, fn's row) for every real example.

    Every process iterates the whole dataset (as `seqio.Evaluator` gives it), feeds only its rows of each global
    batch, and receives all rows back (`process_allgather`), so metrics see every example once.
    """
    layout = self.partitioner.get_data_layout(self.batch_size)
    rows = self.batch_size // layout.num_shards
    mine = slice(layout.shard_id * rows, (layout.shard_id + 1) * rows)
    results: list[tuple[int, Any]] = []
    with self.partitioner.activation_rules_context():
      for idx, feats in batched_indexed(ds, self.batch_size):
        batch = self.partitioner.shard_batch({k: v[mine] for k, v in feats.items()})
        out = jax.tree_util.tree_map(np.asarray, multihost_utils.process_allgather(fn(batch), tiled=True))
        results.extend((int(i), row) for i, row in zip(idx, _rows(out)) if i >= 0)
    return results

  def predict_fn(self, ds: tf.data.Dataset, model_feature_shapes: Mapping[str, int] | None = None):
    del model_feature_shapes
    return self.predict_with_aux_fn(ds)[0]

  def predict_with_aux_fn(self, ds: tf.data.Dataset, model_feature_shapes: Mapping[str, int] | None = None):
    del model_feature_shapes
    rng = jax.random.PRNGKey(0)
    results = self._run(ds, lambda b: self._predict(self.trainable, self.frozen, b, rng))
    return ([(i, tokens.tolist()) for i, (tokens, _) in results],
            {"scores": [aux["scores"].tolist() for _, (_, aux) in results]})

  def score_fn(self, ds: tf.data.Dataset, model_feature_shapes: Mapping[str, int] | None = None):
    del model_feature_shapes
    return [(i, score.tolist()) for i, score in self._run(ds, lambda b: self._score(self.trainable, self.frozen, b))]


def _rows(tree: Any) -> list[Any]:
  """Split a tree of [B, ...] arrays into B trees of rows."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  return [jax.tree_util.tree_unflatten(treedef, [leaf[r] for leaf in leaves]) for r in range(leaves[0].shape[0])]


def make_evaluator(cfg: DatasetConfig, model: EncoderDecoderModel, log_dir: str | None,
                   loggers: Sequence[type] | None = None) -> seqio.Evaluator:
  """`seqio.Evaluator` over the config's task/mixture with T5X's loggers (python log, TensorBoard, JSONL).

  When the model's family picks prompts by task name (a bank of task prompts), each task's examples carry their
  task id.
  """
  if loggers is None:
    loggers = (seqio.PyLoggingLogger, seqio.TensorBoardLogger, seqio.JSONLogger) if log_dir else ()
  evaluator = seqio.Evaluator(
      mixture_or_task_name=cfg.mixture_or_task_name,
      feature_converter=model.FEATURE_CONVERTER_CLS(pack=False),
      eval_split=cfg.split, use_cached=cfg.use_cached, seed=cfg.seed, sequence_length=cfg.task_feature_lengths,
      shuffle=cfg.shuffle, logger_cls=loggers, log_dir=log_dir, use_memory_cache=cfg.use_memory_cache)
  if model.family.task_names:
    datasets = evaluator.cached_model_datasets  # {task: enumerated model features}, updated in place
    for task in evaluator.eval_tasks:
      tid = model.family.task_id(task.name)
      datasets[task.name] = datasets[task.name].map(lambda i, ex, tid=tid: (i, _tagged(ex, tid)))
  return evaluator


def _tagged(features: Mapping[str, tf.Tensor], task_id: int) -> dict[str, tf.Tensor]:
  return {**features, TASK_IDS: tf.constant(task_id, tf.int32)}


def with_task_id(features: tf.data.Dataset, family: PromptFamily, task_name: str) -> tf.data.Dataset:
  """`features` with each example's task id (which picks its prompt) when `family` picks prompts by task name."""
  tid = family.task_id(task_name)
  return features if tid is None else features.map(lambda ex: _tagged(ex, tid))


def run_evaluation(evaluator: seqio.Evaluator, runner: InferenceRunner, step: int) -> dict[str, Any]:
  """Predict and/or score every task of the evaluator; returns {task: {metric: value}}."""
  metrics, _ = evaluator.evaluate(compute_metrics=jax.process_index() == 0, step=step,
                                  predict_fn=runner.predict_fn, score_fn=runner.score_fn,
                                  predict_with_aux_fn=runner.predict_with_aux_fn)
  result = (metrics.result() if metrics is not None else None) or {}  # None on processes other than the first
  for task, values in result.items():
    shown = {k: v for k, v in values.items() if isinstance(v, (int, float, np.floating))}
    logging.info("eval step %d %s: %s", step, task, shown)
  return result
