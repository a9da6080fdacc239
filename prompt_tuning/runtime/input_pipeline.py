"""SeqIO datasets for training and evaluation: per-host shards, resumable position, clear errors."""
from __future__ import annotations

import difflib
import importlib
import logging
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning.errors import UserError
from prompt_tuning.runtime import few_shot
from prompt_tuning.runtime.configs import DatasetConfig


class UnknownTaskError(UserError):
  """No SeqIO task or mixture has the given name."""


def import_task_module(module: str | None) -> None:
  if module:
    importlib.import_module(module)


def get_task_or_mixture(name: str, module: str | None = None) -> seqio.Task | seqio.Mixture:
  """The registered task/mixture; an unknown name lists the closest registered names."""
  import_task_module(module)
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError:
    names = list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names())
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f" Close names: {close}." if close else ""
    raise UnknownTaskError(
        f"Unknown task or mixture {name!r}.{hint} Set MIXTURE_OR_TASK_MODULE to the module that registers it "
        "(e.g. 'prompt_tuning.data.tasks') or check the spelling; "
        "`python -m prompt_tuning.scripts.show_tasks --list` lists registered names.") from None


def training_eval_names(cfg: Any) -> list[str]:
  """What T5X's training evaluation covers: every subtask that has `cfg.split`, then the mixture itself."""
  mixture_or_task = get_task_or_mixture(cfg.mixture_or_task_name, cfg.module)
  names = [task.name for task in seqio.get_subtasks(mixture_or_task) if cfg.split in task.splits]
  if isinstance(mixture_or_task, seqio.Mixture):
    names.append(mixture_or_task.name)
  return names


def count_truncated(cfg: DatasetConfig, max_examples: int = 1000) -> Mapping[str, int]:
  """How many of the first `max_examples` examples exceed each feature length (warned, as T5X trims silently)."""
  if not cfg.task_feature_lengths:
    return {}
  task = get_task_or_mixture(cfg.mixture_or_task_name, cfg.module)
  tasks = task.tasks if isinstance(task, seqio.Mixture) else [task]
  counts = {k: 0 for k in cfg.task_feature_lengths}
  for t in tasks:
    if cfg.split not in t.splits:
      continue
    ds = t.get_dataset(sequence_length=None, split=cfg.split, shuffle=False, use_cached=cfg.use_cached,
                       trim_output_features=False).take(max_examples)
    for ex in ds.as_numpy_iterator():
      for k, limit in cfg.task_feature_lengths.items():
        if k in ex and len(ex[k]) > limit:
          counts[k] += 1
  for k, n in counts.items():
    if n:
      logging.warning("%d of the first %d examples of %s/%s have %s longer than %d tokens and will be "
                      "truncated; raise TASK_FEATURE_LENGTHS[%r] to keep them whole.", n, max_examples,
                      cfg.mixture_or_task_name, cfg.split, k, cfg.task_feature_lengths[k], k)
  return counts


def get_dataset(cfg: DatasetConfig, feature_converter: seqio.FeatureConverter, shard_id: int = 0,
                num_shards: int = 1, num_epochs: int | None = None,
                few_shot_parts: Sequence[tuple[few_shot.Subset, float]] | None = None) -> tf.data.Dataset:
  """Batched model features for this host's shard (batch = global batch / num_shards). With FEW_SHOT_K, the
  subsets are `few_shot_parts` when the caller has selected them already (`few_shot_subsets`)."""
  get_task_or_mixture(cfg.mixture_or_task_name, cfg.module)
  if cfg.batch_size % num_shards:
    raise ValueError(f"Global batch size {cfg.batch_size} is not divisible by the {num_shards} input shards; "
                     f"set BATCH_SIZE to a multiple of {num_shards}.")
  if cfg.pack:
    raise ValueError("Prompt tuning does not support packing: set DatasetConfig.pack=False.")
  if cfg.few_shot_k is not None:
    parts = few_shot_parts if few_shot_parts is not None else few_shot_subsets(cfg)
    ds = few_shot.stream(list(parts), cfg.shuffle, cfg.seed, num_epochs, shard_id, num_shards)
    ds = feature_converter(ds, task_feature_lengths=cfg.task_feature_lengths)
    return ds.batch(cfg.batch_size // num_shards, drop_remainder=True)
  return seqio.get_dataset(
      mixture_or_task_name=cfg.mixture_or_task_name, task_feature_lengths=cfg.task_feature_lengths,
      feature_converter=feature_converter, dataset_split=cfg.split, use_cached=cfg.use_cached,
      shuffle=cfg.shuffle, num_epochs=num_epochs, shard_info=seqio.ShardInfo(shard_id, num_shards),
      verbose=False, seed=cfg.seed, batch_size=cfg.batch_size // num_shards,
      trim_output_features=cfg.trim_output_features)


def few_shot_subsets(cfg: DatasetConfig) -> list[tuple[few_shot.Subset, float]]:
  """The few-shot subset of each task of `cfg` (with its mixing rate); [] without FEW_SHOT_K."""
  if cfg.few_shot_k is None:
    return []
  provider = get_task_or_mixture(cfg.mixture_or_task_name, cfg.module)
  return few_shot.subsets(provider, cfg.split, cfg.few_shot_k, cfg.few_shot_seed, cfg.few_shot_per_class,
                          cfg.use_cached, cfg.task_feature_lengths, cfg.trim_output_features)


def numpy_batches(ds: tf.data.Dataset, skip: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Host numpy batches, starting after `skip` batches (the position saved in a checkpoint), prefetched."""
  return ds.skip(skip).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
