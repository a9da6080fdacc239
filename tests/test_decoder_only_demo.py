"""The offline demo with the decoder-only model, end to end through the CLIs, at test size: a small decoder-only
model pretrained from scratch on the demo world (language modelling, `demo_pretrain_lm`), then a prompt tuned on
`demo_sentiment`, a task it never saw (validation reviews use only words the training reviews lack), evaluated by
the eval CLI on the run's checkpoint: accuracy far above chance (50%)."""
from __future__ import annotations

import json

from cli_utils import run_cli

PRETRAIN_STEPS, PROMPT_STEPS = 300, 60
COMMON = ["--gin.MIXTURE_OR_TASK_MODULE='prompt_tuning.data.demo'", "--gin.DROPOUT_RATE=0.0", "--gin.RANDOM_SEED=0",
          "--gin.STATS_PERIOD=50", "--gin.EVAL_PERIOD=0"]


def test_decoder_only_demo_pretrain_then_prompt_tune_beats_chance(tmp_path):
  """The demo's model (models/decoder_only_demo*.gin: d 64, 2 layers), fewer steps than launch/local/demo.sh."""
  pretrained, prompt = tmp_path / "pretrained", tmp_path / "prompt"
  run_cli("train", ["--gin_file=models/decoder_only_demo.gin", "--gin_file=runs/finetune.gin", *COMMON,
                    f"--gin.MODEL_DIR='{pretrained}'", "--gin.MIXTURE_OR_TASK_NAME='demo_pretrain_lm'",
                    "--gin.TASK_FEATURE_LENGTHS={'targets': 32}", "--gin.INITIAL_CHECKPOINT_PATH=None",
                    f"--gin.TRAIN_STEPS={PRETRAIN_STEPS}", "--gin.BATCH_SIZE=32", "--gin.LEARNING_RATE=0.02",
                    f"--gin.SAVE_PERIOD={PRETRAIN_STEPS}"], tmp_path)
  end = PRETRAIN_STEPS + PROMPT_STEPS
  run_cli("train", ["--gin_file=models/decoder_only_demo_prompt.gin", "--gin_file=prompts/from_class_labels.gin",
                    "--gin_file=runs/prompt_finetune.gin", *COMMON, f"--gin.MODEL_DIR='{prompt}'",
                    "--gin.MIXTURE_OR_TASK_NAME='demo_sentiment'",
                    "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 2}",
                    f"--gin.INITIAL_CHECKPOINT_PATH='{pretrained}'", "--gin.CLASS_LABELS=['positive', 'negative']",
                    "--gin.PROMPT_LENGTH=10", f"--gin.TRAIN_STEPS={end}", "--gin.BATCH_SIZE=32",
                    f"--gin.SAVE_PERIOD={PROMPT_STEPS}"], tmp_path)
  info = (prompt / "model-info.txt").read_text().splitlines()
  assert [l.split()[1] for l in info if l.endswith("trainable")] == ["decoder/prompt/prompt/prompt"], info
  run_cli("eval", ["--gin_file=models/decoder_only_demo_prompt.gin", "--gin_file=runs/eval.gin",
                   f"--gin.CHECKPOINT_PATH='{prompt / f'checkpoint_{end}'}'",
                   "--gin.MIXTURE_OR_TASK_NAME='demo_sentiment'",
                   "--gin.MIXTURE_OR_TASK_MODULE='prompt_tuning.data.demo'", "--gin.PROMPT_LENGTH=10",
                   "--gin.utils.DatasetConfig.split='validation'", "--gin.BATCH_SIZE=100",
                   f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'eval'}'"], tmp_path)
  metrics = json.loads((tmp_path / "eval" / "demo_sentiment-metrics.jsonl").read_text().splitlines()[-1])
  # 500 balanced validation reviews: chance is 50% (2.2 points standard deviation); this setting gives 98.8 with
  # RANDOM_SEED=0 (other seeds: 96.6 and 50.4; docs/decoder_only.md), so the seed stays fixed.
  print(f"demo_sentiment validation accuracy {metrics['accuracy']:.1f}")
  assert metrics["step"] == end and metrics["accuracy"] > 70.0, metrics
