r"""Evaluate a prompt or a checkpoint on a SeqIO task with `seqio.Evaluator` (T5X `eval.py` flags).

  python -m prompt_tuning.eval --gin_file=models/t5_1_1_base_prompt.gin --gin_file=runs/prompt_eval.gin \
    --gin.MIXTURE_OR_TASK_NAME="'taskless_glue_sst2_v200_examples'" --gin.CHECKPOINT_PATH="'...'" \
    --gin.PROMPT_FILE="'sst2.npy'" --gin.EVAL_OUTPUT_DIR="'/tmp/eval'" --gin.utils.DatasetConfig.split="'validation'"
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from prompt_tuning import cli, gin_utils
from prompt_tuning.runtime import evaluation, input_pipeline
from prompt_tuning.runtime.checkpoints import formats
from prompt_tuning.runtime.checkpoints import restore as restore_lib
from prompt_tuning.runtime.configs import DatasetConfig, RestoreCheckpointConfig
from prompt_tuning.runtime.models import EncoderDecoderModel
from prompt_tuning.runtime.state_init import build_inference_params


RESTORE_MODES = ("specific", "latest", "all")


def checkpoints_to_evaluate(restore: RestoreCheckpointConfig) -> list[RestoreCheckpointConfig]:
  """T5X's restore modes: 'specific' and 'latest' evaluate one checkpoint (a model dir means its latest);
  'all' evaluates every `checkpoint_<step>` of the model dir at `path`, in step order."""
  if restore.mode not in RESTORE_MODES:
    raise gin_utils.ConfigError(f"RestoreCheckpointConfig.mode={restore.mode!r} is not one of {RESTORE_MODES}.")
  if restore.mode != "all":
    return [restore]
  steps = formats.all_steps(restore.path) if restore.path else []
  if not steps:
    raise gin_utils.ConfigError(
        f"RestoreCheckpointConfig.mode='all' needs a model dir holding checkpoint_<step> dirs; {restore.path!r} has "
        "none. Give MODEL_DIR as CHECKPOINT_PATH, or use mode='specific'.")
  return [dataclasses.replace(restore, step=step) for step in steps]


def evaluate(*, model: EncoderDecoderModel, dataset_cfg: DatasetConfig, partitioner: Any,
             restore_checkpoint_cfg: RestoreCheckpointConfig, output_dir: str,
             random_seed: int = 0) -> dict[str, Any]:
  """Metrics of every task in `dataset_cfg` (also logged to `output_dir`: `<task>-metrics.jsonl`, TensorBoard);
  with `mode='all'`, a dict of them by checkpoint step."""
  cli.write_config(output_dir)
  restores = checkpoints_to_evaluate(restore_checkpoint_cfg)
  input_pipeline.get_task_or_mixture(dataset_cfg.mixture_or_task_name, dataset_cfg.module)
  input_pipeline.count_truncated(dataset_cfg)
  evaluator = evaluation.make_evaluator(dataset_cfg, model, output_dir)
  runner = evaluation.InferenceRunner(model, partitioner, dataset_cfg.batch_size)
  results = {}
  with restore_lib.reuse_frozen_base():  # mode='all': the run's frozen weights are read once
    for restore in restores:
      run = build_inference_params(model, partitioner, dataset_cfg, restore, random_seed)
      runner.set_params(run.trainable, run.frozen)
      results[run.checkpoint_step or 0] = evaluation.run_evaluation(evaluator, runner,
                                                                    step=run.checkpoint_step or 0)
  return results if restore_checkpoint_cfg.mode == "all" else next(iter(results.values()))


def main(argv: Sequence[str]) -> None:
  cli.run_gin_main(argv, evaluate)


if __name__ == "__main__":
  cli.start(main)
