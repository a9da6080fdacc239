r"""Evaluate a prompt or a checkpoint on a SeqIO task with `seqio.Evaluator` (T5X `eval.py` flags).

  python -m prompt_tuning.eval --gin_file=models/t5_1_1_base_prompt.gin --gin_file=runs/prompt_eval.gin \
    --gin.MIXTURE_OR_TASK_NAME="'taskless_glue_sst2_v200_examples'" --gin.CHECKPOINT_PATH="'...'" \
    --gin.PROMPT_FILE="'sst2.npy'" --gin.EVAL_OUTPUT_DIR="'/tmp/eval'" --gin.utils.DatasetConfig.split="'validation'"
"""
from __future__ import annotations

from typing import Any, Sequence

import jax

from prompt_tuning import cli
from prompt_tuning.runtime import evaluation, input_pipeline
from prompt_tuning.runtime.configs import DatasetConfig, RestoreCheckpointConfig
from prompt_tuning.runtime.models import EncoderDecoderModel
from prompt_tuning.runtime.state_init import build_run_params



def evaluate(*, model: EncoderDecoderModel, dataset_cfg: DatasetConfig, partitioner: Any,
             restore_checkpoint_cfg: RestoreCheckpointConfig, output_dir: str,
             random_seed: int = 0) -> dict[str, Any]:
  """Metrics of every task in `dataset_cfg` (also logged to `output_dir`: `<task>-metrics.jsonl`, TensorBoard)."""
  cli.write_config(output_dir)
  input_pipeline.get_task_or_mixture(dataset_cfg.mixture_or_task_name, dataset_cfg.module)
  input_pipeline.count_truncated(dataset_cfg)
  evaluator = evaluation.make_evaluator(dataset_cfg, model, output_dir)
  shapes = {"encoder_input_tokens": (dataset_cfg.batch_size, 8), "decoder_input_tokens": (dataset_cfg.batch_size, 8)}
  run = build_run_params(model, partitioner, shapes, restore_checkpoint_cfg, (".*",), jax.random.PRNGKey(random_seed))
  runner = evaluation.InferenceRunner(model, partitioner, dataset_cfg.batch_size)
  runner.set_params(run.trainable, run.frozen)
  return evaluation.run_evaluation(evaluator, runner, step=run.checkpoint_step or 0)


def main(argv: Sequence[str]) -> None:
  cli.run_gin_main(argv, evaluate)


if __name__ == "__main__":
  cli.start(main)
