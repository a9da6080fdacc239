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

    def score(trainable, frozen, batch, num_candidates=1):
      params = merge_trainable(trainable, frozen)
      if num_candidates > 1:  # the candidates of an example share one encoder pass
        return model.score_candidates(params, batch, num_candidates)
      return model.score_batch(params, batch)

    self._predict = jax.jit(predict)
    self._score = jax.jit(score, static_argnames="num_candidates")
    self._shares_encoder = hasattr(model, "score_candidates")

  def set_params(self, trainable: Any, frozen: Any) -> None:
    self.trainable, self.frozen = trainable, frozen

  def _run(self, ds: tf.data.Dataset, fn: Callable[..., Any], share_encoder: bool = False) -> list[tuple[int, Any]]:
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
        # Every process sees the whole global batch, so all take the same branch.
        groups = candidate_group_size(feats, rows) if share_encoder else 1
        out = fn(batch, groups) if groups > 1 else fn(batch)
        out = jax.tree_util.tree_map(np.asarray, multihost_utils.process_allgather(out, tiled=True))
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
    def score(batch, num_candidates=1):
      return self._score(self.trainable, self.frozen, batch, num_candidates=num_candidates)
    return [(i, s.tolist()) for i, s in self._run(ds, score, share_encoder=self._shares_encoder)]


def candidate_group_size(feats: Mapping[str, np.ndarray], rows_per_process: int) -> int:
  """C when the batch is made of groups of C adjacent rows that differ only in their decoder features (SeqIO's
  `rank_classification` rows: one per label candidate), so their encoder pass can be shared; 1 otherwise.

  Checked on the host for every batch: a batch that breaks the layout (the padded last one, an example with
  another number of candidates) is scored row by row. Groups never span processes (C divides each one's rows).
  """
  encoder_side = [v.reshape(len(v), -1) for k, v in feats.items() if not k.startswith("decoder_")]
  n = len(encoder_side[0]) if encoder_side else 0
  same_as_previous = np.all([np.all(v[1:] == v[:-1], axis=1) for v in encoder_side], axis=0) if n > 1 else []
  c = 1
  while c < n and same_as_previous[c - 1]:
    c += 1
  if c == 1 or n % c or rows_per_process % c:
    return 1
  if not all(np.all(v.reshape(n // c, c, -1) == v[::c, None]) for v in encoder_side):
    return 1
  return c


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
