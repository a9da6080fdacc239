#!/usr/bin/env bash
# `make demo`: the main job, offline on a CPU, in a few minutes.
#  1. Pretrain a small T5 1.1 from scratch on generated text (span corruption + prefix LM), once; cached in
#     artifacts/demo/pretrained-<vocabulary hash> (delete it to rebuild).
#  2. Prompt-tune it (only a 20-token prompt trains, class-label init) on `demo_sentiment`, a task it never saw.
#  3. Print the validation accuracy before and after, and where the prompt file is.
# Every step is the same gin CLI a user runs on a TPU; only the model size and the tasks differ.
# DEMO_MODEL=decoder_only runs both steps with the decoder-only model instead (docs/decoder_only.md); its
# artifacts are prefixed "decoder_only-".
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
OUT=${DEMO_DIR:-artifacts/demo}
PRETRAIN_STEPS=${DEMO_PRETRAIN_STEPS:-1000}
PROMPT_STEPS=${DEMO_PROMPT_STEPS:-150}
MODEL=${DEMO_MODEL:-t5_1_1}
case "$MODEL" in
  t5_1_1) TAG=""; STACK=encoder ;;
  decoder_only) TAG="decoder_only-"; STACK=decoder ;;
  *) echo "DEMO_MODEL=$MODEL is not one of t5_1_1, decoder_only" >&2; exit 2 ;;
esac
export PROMPT_TUNING_DEMO_CACHE=${PROMPT_TUNING_DEMO_CACHE:-$OUT/cache}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
# The pretrained model is tied to the demo vocabulary: its file name carries the vocabulary's hash.
VOCAB_ID=$("$PY" -c "import os; from prompt_tuning.data import demo; print(os.path.basename(demo.sentencepiece_model_path()).split('.')[0])" 2>/dev/null | tail -1)
PRETRAINED="$OUT/${TAG}pretrained-$VOCAB_ID"
COMMON=(--gin.MIXTURE_OR_TASK_MODULE="'prompt_tuning.data.demo'" --gin.DROPOUT_RATE=0.0 --gin.STATS_PERIOD=50)

if [ ! -d "$PRETRAINED/checkpoint_$PRETRAIN_STEPS" ]; then
  echo "== 1/2 pretraining the frozen model ($PRETRAIN_STEPS steps; cached in $PRETRAINED)"
  rm -rf "$PRETRAINED"
  "$PY" -m prompt_tuning.train \
    --gin_file="models/${MODEL}_demo.gin" \
    --gin_file=runs/finetune.gin \
    --gin.MODEL_DIR="'$PRETRAINED'" \
    --gin.MIXTURE_OR_TASK_NAME="'demo_pretrain'" \
    --gin.TASK_FEATURE_LENGTHS="{'inputs': 32, 'targets': 32}" \
    --gin.INITIAL_CHECKPOINT_PATH=None \
    --gin.TRAIN_STEPS="$PRETRAIN_STEPS" --gin.BATCH_SIZE=32 --gin.LEARNING_RATE=0.01 \
    --gin.SAVE_PERIOD="$PRETRAIN_STEPS" --gin.EVAL_PERIOD=0 "${COMMON[@]}"
else
  echo "== 1/2 using the cached pretrained model in $PRETRAINED"
fi

echo "== 2/2 prompt tuning on demo_sentiment ($PROMPT_STEPS steps, only the prompt trains)"
rm -rf "$OUT/${TAG}prompt"
"$PY" -m prompt_tuning.train \
  --gin_file="models/${MODEL}_demo_prompt.gin" \
  --gin_file=prompts/from_class_labels.gin \
  --gin_file=runs/prompt_finetune.gin \
  --gin.MODEL_DIR="'$OUT/${TAG}prompt'" \
  --gin.MIXTURE_OR_TASK_NAME="'demo_sentiment'" \
  --gin.TASK_FEATURE_LENGTHS="{'inputs': 16, 'targets': 2}" \
  --gin.INITIAL_CHECKPOINT_PATH="'$PRETRAINED'" \
  --gin.CLASS_LABELS="['positive', 'negative']" --gin.PROMPT_LENGTH=20 \
  --gin.TRAIN_STEPS=$((PRETRAIN_STEPS + PROMPT_STEPS)) --gin.BATCH_SIZE=32 \
  --gin.EVAL_PERIOD="$PROMPT_STEPS" --gin.SAVE_PERIOD="$PROMPT_STEPS" \
  --gin.train_script.train.run_eval_before_training=True "${COMMON[@]}"

echo
echo "== result (validation accuracy, %; chance is 50)"
"$PY" -m prompt_tuning.scripts.summarize_run "$OUT/${TAG}prompt" --metric accuracy
echo "prompt: $OUT/${TAG}prompt/numpy_checkpoints/checkpoint_$((PRETRAIN_STEPS + PROMPT_STEPS))/$STACK.prompt.prompt.prompt(.npy)"
