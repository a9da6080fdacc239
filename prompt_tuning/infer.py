r"""Write predictions (or scores) of a prompt / checkpoint for a task or mixture as JSONL (T5X `infer.py`).

The examples of a mixture's tasks are interleaved, so a batch can mix tasks: with a family that picks prompts by
task name (a prompt bank, `serving/prompt_bank.gin`) one frozen model serves them all, each example with its
task's prompt.

Output: `INFER_OUTPUT_DIR/<task>-<mode>.jsonl-<shard:05>-of-<num:05>` with one JSON object per example
(`inputs`, `prediction` or `score`, `targets`), then a `.COMPLETED` marker.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
import seqio
import tensorflow as tf
from absl import flags
from etils import epath

from prompt_tuning import cli
from prompt_tuning.runtime import evaluation, input_pipeline
from prompt_tuning.runtime.configs import DatasetConfig, RestoreCheckpointConfig
from prompt_tuning.runtime.models import EncoderDecoderModel
from prompt_tuning.runtime.state_init import build_inference_params

FLAGS = flags.FLAGS
if "shard_id" not in FLAGS:  # defined once per process: this module may run as __main__ after being imported
  flags.DEFINE_integer("shard_id", None, "This job's shard of the input (T5X); the same as binding infer.shard_id.")

MODES = ("predict", "score", "predict_with_aux")


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def infer(*, model: EncoderDecoderModel, dataset_cfg: DatasetConfig, partitioner: Any,
          restore_checkpoint_cfg: RestoreCheckpointConfig, output_dir: str, mode: str = "predict",
          shard_id: int = 0, num_shards: int = 1, random_seed: int = 0) -> list[str]:
  """Run inference for every task of the task/mixture; returns the written file paths."""
  if mode not in MODES:
    raise ValueError(f"infer mode={mode!r} is not one of {MODES}.")
  cli.write_config(output_dir)
  root = input_pipeline.get_task_or_mixture(dataset_cfg.mixture_or_task_name, dataset_cfg.module)
  tasks = root.tasks if isinstance(root, seqio.Mixture) else [root]
  input_pipeline.count_truncated(dataset_cfg)
  run = build_inference_params(model, partitioner, dataset_cfg, restore_checkpoint_cfg, random_seed)
  runner = evaluation.InferenceRunner(model, partitioner, dataset_cfg.batch_size)
  runner.set_params(run.trainable, run.frozen)
  converter = model.FEATURE_CONVERTER_CLS(pack=False)
  served = []
  for task in tasks:
    if dataset_cfg.split not in task.splits:
      logging.warning("Task %s has no split %r; skipped.", task.name, dataset_cfg.split)
      continue
    raw = task.get_dataset(sequence_length=dataset_cfg.task_feature_lengths, split=dataset_cfg.split,
                           shuffle=False, use_cached=dataset_cfg.use_cached).shard(num_shards, shard_id)
    features = converter(raw, dataset_cfg.task_feature_lengths)
    features = evaluation.with_task_id(features, model.family, task.name)
    served.append((task, list(raw.as_numpy_iterator()), features))
  run_fn = {"score": runner.score_fn, "predict": runner.predict_fn,
            "predict_with_aux": lambda ds: _with_aux(*runner.predict_with_aux_fn(ds))}[mode]
  outputs = _run_mixed(run_fn, [(len(examples), features) for _, examples, features in served])
  out_dir = epath.Path(output_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  written = []
  for (task, examples, _), task_outputs in zip(served, outputs):
    vocab = task.output_features["targets"].vocabulary
    path = out_dir / f"{task.name}-{mode}.jsonl-{shard_id:05d}-of-{num_shards:05d}"
    written.append(str(path))
    if jax.process_index() != 0:  # every process holds every output; the first one writes them
      continue
    with path.open("w") as f:
      for i, ex in enumerate(examples):
        row = {"inputs": _text(ex.get("inputs_pretokenized", "")), "targets": _text(ex.get("targets_pretokenized", ""))}
        if mode == "score":
          row["score"] = float(task_outputs[i])
        else:
          tokens, aux = task_outputs[i] if mode == "predict_with_aux" else (task_outputs[i], None)
          row["prediction"] = vocab.decode([int(t) for t in np.asarray(tokens)])
          if aux is not None:
            row["aux"] = aux  # T5X: the decoder's auxiliary outputs, e.g. {"scores": log-likelihood}
        f.write(json.dumps(row) + "\n")
    (out_dir / f"{path.name}.COMPLETED").write_text("")
    logging.info("Wrote %d %s rows for %s to %s", len(examples), mode, task.name, path)
  return written


def _with_aux(predictions: list[tuple[int, Any]], aux: Mapping[str, list[Any]]) -> list[tuple[int, Any]]:
  """(index, (tokens, {aux name: that row's value})) from `predict_with_aux_fn`'s two parallel outputs."""
  return [(i, (tokens, {name: values[row] for name, values in aux.items()}))
          for row, (i, tokens) in enumerate(predictions)]


def _run_mixed(run_fn: Callable[[tf.data.Dataset], list[tuple[int, Any]]],
               datasets: Sequence[tuple[int, tf.data.Dataset]]) -> list[dict[int, Any]]:
  """Runs the tasks' examples as one stream, taking them from the tasks in turn so that a batch mixes tasks;
  returns each task's {example index: output}. `datasets` holds (number of examples, model features)."""
  if not datasets:
    return []
  offsets = np.cumsum([0] + [n for n, _ in datasets])
  indexed = [ds.enumerate().map(lambda i, ex, o=int(o): (i + o, ex)) for o, (_, ds) in zip(offsets, datasets)]
  stream = tf.data.Dataset.choose_from_datasets(indexed, tf.data.Dataset.range(len(indexed)).repeat(),
                                                stop_on_empty_dataset=False)
  results = dict(run_fn(stream))
  return [{i: results[int(o) + i] for i in range(n)} for o, (n, _) in zip(offsets, datasets)]


def main(argv: Sequence[str]) -> None:
  shard = {} if FLAGS.shard_id is None else {"shard_id": FLAGS.shard_id}
  cli.run_gin_main(argv, infer, **shard)


if __name__ == "__main__":
  cli.start(main)
