r"""Write predictions (or scores) of a prompt / checkpoint for a task or mixture as JSONL (T5X `infer.py`).

Output: `INFER_OUTPUT_DIR/<task>-<mode>.jsonl-<shard:05>-of-<num:05>` with one JSON object per example
(`inputs`, `prediction` or `score`, `targets`), then a `.COMPLETED` marker.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Sequence

import jax
import numpy as np
import seqio
from etils import epath

from prompt_tuning import cli
from prompt_tuning.runtime import evaluation, input_pipeline
from prompt_tuning.runtime.configs import DatasetConfig, RestoreCheckpointConfig
from prompt_tuning.runtime.models import EncoderDecoderModel
from prompt_tuning.runtime.state_init import build_run_params

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
  shapes = {"encoder_input_tokens": (dataset_cfg.batch_size, 8), "decoder_input_tokens": (dataset_cfg.batch_size, 8)}
  run = build_run_params(model, partitioner, shapes, restore_checkpoint_cfg, (".*",), jax.random.PRNGKey(random_seed))
  runner = evaluation.InferenceRunner(model, partitioner, dataset_cfg.batch_size)
  runner.set_params(run.trainable, run.frozen)
  converter = model.FEATURE_CONVERTER_CLS(pack=False)
  out_dir = epath.Path(output_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  written = []
  for task in tasks:
    if dataset_cfg.split not in task.splits:
      logging.warning("Task %s has no split %r; skipped.", task.name, dataset_cfg.split)
      continue
    raw = task.get_dataset(sequence_length=dataset_cfg.task_feature_lengths, split=dataset_cfg.split,
                           shuffle=False, use_cached=dataset_cfg.use_cached).shard(num_shards, shard_id)
    examples = list(raw.as_numpy_iterator())
    features = converter(raw, dataset_cfg.task_feature_lengths).enumerate()
    if mode == "score":
      outputs = dict(runner.score_fn(features))
    else:
      outputs = dict(runner.predict_fn(features))
    vocab = task.output_features["targets"].vocabulary
    path = out_dir / f"{task.name}-{mode}.jsonl-{shard_id:05d}-of-{num_shards:05d}"
    with path.open("w") as f:
      for i, ex in enumerate(examples):
        row = {"inputs": _text(ex.get("inputs_pretokenized", "")), "targets": _text(ex.get("targets_pretokenized", ""))}
        if mode == "score":
          row["score"] = float(outputs[i])
        else:
          row["prediction"] = vocab.decode([int(t) for t in np.asarray(outputs[i])])
        f.write(json.dumps(row) + "\n")
    (out_dir / f"{path.name}.COMPLETED").write_text("")
    logging.info("Wrote %d %s rows for %s to %s", len(examples), mode, task.name, path)
    written.append(str(path))
  return written


def main(argv: Sequence[str]) -> None:
  cli.run_gin_main(argv, infer)


if __name__ == "__main__":
  cli.start(main)
