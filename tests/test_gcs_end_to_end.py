"""gs:// end to end, offline: every input and output of a prompt-tuning run in a local GCS emulator's bucket,
driven through the CLIs as a Cloud TPU user runs them (tests/gcs_emulator.py says how each library reaches it)."""
from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from etils import epath

import gcs_emulator
import gcs_tasks
from cli_utils import kill_cli_when, run_cli
from prompt_tuning import errors
from prompt_tuning.runtime.model_dir_claim import CLAIM_FILE, Holder

pytestmark = pytest.mark.skipif(gcs_emulator.missing_requirements() is not None,
                                reason=str(gcs_emulator.missing_requirements()))

BUCKET = "pt-test-bucket"
PROMPT = "numpy_checkpoints/checkpoint_{step}/encoder.prompt.prompt.prompt"
PROMPT_VARIABLE = "target/encoder/prompt/prompt/prompt"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """The emulator on a free loopback port, with a bucket, and the libraries pointed at it for the module."""
  fake = gcs_emulator.start(tmp_path_factory.mktemp("gcs"))
  try:
    fake.create_bucket(BUCKET)
    with gcs_emulator.environment(fake.env):
      yield fake
  finally:
    fake.stop()


@pytest.fixture(scope="module")
def inputs(gcs, tiny_t5x_checkpoint, t5_vocab_path):
  """The real T5X tiny checkpoint and the T5 vocabulary uploaded, and the TFDS dataset prepared, in the bucket."""
  root = epath.Path(f"gs://{BUCKET}")
  checkpoint, vocab = root / "pretrained" / "checkpoint_3", root / "vocab" / "sentencepiece.model"
  gcs.upload(tiny_t5x_checkpoint, str(checkpoint))
  gcs.upload(t5_vocab_path, str(vocab))
  tfds_dir = root / "tfds"
  gcs_tasks.GcsTestSentiment(data_dir=str(tfds_dir)).download_and_prepare()
  return {"checkpoint": str(checkpoint), "vocab": str(vocab), "tfds": str(tfds_dir)}


def _load(url: str) -> np.ndarray:
  with epath.Path(url).open("rb") as f:
    return np.load(f)


def _steps(gcs, folder: str) -> list[int]:
  """The steps of the `checkpoint_<step>/` folders directly under `folder` in the bucket."""
  return sorted({int(m.group(1)) for n in gcs.objects(BUCKET, folder)
                 if (m := re.match(rf"{re.escape(folder)}checkpoint_(\d+)/", n))})


LENGTHS = "--gin.TASK_FEATURE_LENGTHS={'inputs': 12, 'targets': 4}"  # eval takes them from the data, as training's


def _flags(inputs, *extra: str) -> list[str]:
  return ["--gin_file=models/t5_1_1_tiny_prompt.gin", f"--tfds_data_dir={inputs['tfds']}",
          "--gin.MIXTURE_OR_TASK_NAME='gcs_test_sentiment'", "--gin.MIXTURE_OR_TASK_MODULE='gcs_tasks'",
          "--gin.PROMPT_LENGTH=3", "--gin.BATCH_SIZE=4", *extra]


def _train_flags(inputs, model_dir: str, steps: int, *extra: str) -> list[str]:
  return _flags(inputs, "--gin_file=prompts/from_class_labels.gin", "--gin_file=runs/prompt_finetune.gin", LENGTHS,
                f"--gin.MODEL_DIR='{model_dir}'", f"--gin.INITIAL_CHECKPOINT_PATH='{inputs['checkpoint']}'",
                "--gin.CLASS_LABELS=['negative', 'positive']", f"--gin.TRAIN_STEPS={steps}",
                "--gin.STATS_PERIOD=2", "--gin.SAVE_PERIOD=2", "--gin.KEEP_CHECKPOINTS=2", "--gin.DROPOUT_RATE=0.0",
                *extra)


@pytest.mark.slow
def test_prompt_tuning_with_everything_on_gcs(gcs, inputs, tmp_path, monkeypatch):
  monkeypatch.setenv("PROMPT_TUNING_VOCAB", inputs["vocab"])
  last = 9  # the T5X checkpoint is at step 3: 6 prompt-tuning steps
  # The reference: the same run, uninterrupted, on local disk.
  straight = tmp_path / "straight"
  run_cli("train", _train_flags(inputs, str(straight), last, "--gin.EVAL_PERIOD=4"), tmp_path)
  expected = np.load(straight / PROMPT.format(step=last))

  # On gs://: killed (SIGKILL, in its own process) once its save at step 5 is in the bucket, then started again.
  spec_dir = f"gs://{BUCKET}/sweep"
  run_id = "gcs_test/tiny/prompt_tuning-len3-from_class_labels/seed0"
  model_dir = f"{spec_dir}/{run_id}"
  flags = _train_flags(inputs, model_dir, last, "--gin.EVAL_PERIOD=4")
  saved = lambda: _steps(gcs, f"sweep/{run_id}/numpy_checkpoints/")
  # Each look lists the bucket: every 0.1 s, not every 0.01 s (2,000 listings competed with the run's start-up).
  kill_cli_when("train", flags, tmp_path, ready=lambda: 5 in saved(), poll_seconds=0.1)
  at_kill = saved()
  assert 5 in at_kill and last not in at_kill, f"the run was not killed mid-way (saved steps {at_kill})"
  resumed = run_cli("train", flags, tmp_path)
  assert f"Resuming from {model_dir}/checkpoint_{at_kill[-1]}" in resumed.stderr, resumed.stderr[-3000:]
  kept = _steps(gcs, f"sweep/{run_id}/")
  assert kept == [7, last], kept  # KEEP_CHECKPOINTS=2: the older ones deleted from the bucket
  run = epath.Path(model_dir)
  np.testing.assert_array_equal(_load(f"{model_dir}/{PROMPT.format(step=last)}"), expected)
  # What the run leaves in MODEL_DIR, all in the bucket.
  names = set(gcs.objects(BUCKET, f"sweep/{run_id}/"))
  for name in ("config.gin", "model-info.txt", "frozen_weights.json", PROMPT.format(step=last),
               PROMPT.format(step=last) + ".npy", "inference_eval/gcs_test_sentiment-metrics.jsonl"):
    assert f"sweep/{run_id}/{name}" in names, (name, sorted(names)[:40])
  assert any(n.startswith(f"sweep/{run_id}/checkpoint_{last}/") for n in names)
  assert any(n.startswith(f"sweep/{run_id}/train/events.out.tfevents") for n in names)
  assert json.loads((run / "frozen_weights.json").read_text())["path"] == inputs["checkpoint"]
  metrics = [json.loads(l) for l in (run / "inference_eval" / "gcs_test_sentiment-metrics.jsonl").read_text()
             .splitlines()]
  # EVAL_PERIOD=4 counts from the step a process starts at, as in T5X: the killed run evaluates at 7 if it got
  # that far, the resumed one at its last step.
  steps = [m["step"] for m in metrics]
  assert steps[-1] == last and set(steps) <= {7, last}, (at_kill, metrics)

  # The run's own checkpoint evaluated as in T5X: the frozen weights come from the recorded gs:// checkpoint.
  eval_dir = f"gs://{BUCKET}/eval"
  run_cli("eval", _flags(inputs, "--gin_file=runs/eval.gin", f"--gin.CHECKPOINT_PATH='{model_dir}/checkpoint_{last}'",
                         "--gin.utils.DatasetConfig.split='validation'", f"--gin.EVAL_OUTPUT_DIR='{eval_dir}'"),
          tmp_path)
  evaluated = json.loads(epath.Path(f"{eval_dir}/gcs_test_sentiment-metrics.jsonl").read_text().splitlines()[-1])
  assert evaluated["step"] == last and evaluated["accuracy"] == metrics[-1]["accuracy"], (evaluated, metrics)
  predictions = lambda folder: [json.loads(l)["prediction"] for l in
                                epath.Path(f"{folder}/gcs_test_sentiment-{last:06d}.jsonl").read_text().splitlines()]
  assert predictions(eval_dir) == predictions(f"{model_dir}/inference_eval")

  # Inference with the exported prompt file (gs://) on the frozen T5X checkpoint (gs://).
  infer_dir = f"gs://{BUCKET}/infer"
  run_cli("infer", _flags(inputs, "--gin_file=runs/prompt_infer.gin", LENGTHS,
                          f"--gin.CHECKPOINT_PATH='{inputs['checkpoint']}'",
                          f"--gin.PROMPT_FILE='{model_dir}/{PROMPT.format(step=last)}'",
                          "--gin.utils.DatasetConfig.split='validation'", f"--gin.INFER_OUTPUT_DIR='{infer_dir}'"),
          tmp_path)
  out = epath.Path(infer_dir) / "gcs_test_sentiment-predict.jsonl-00000-of-00001"
  rows = [json.loads(l) for l in out.read_text().splitlines()]
  assert sorted((r["inputs"], r["targets"]) for r in rows) == sorted(
      (gcs_tasks.sentence(i), gcs_tasks.LABELS[i % 2]) for i in range(gcs_tasks.SPLIT_SIZES["validation"]))
  assert (out.parent / (out.name + ".COMPLETED")).exists()

  # One variable of the run checkpoint (Orbax on gs://) to a gs:// .npy.
  extracted = f"gs://{BUCKET}/extracted/prompt.npy"
  run_cli("scripts.extract_variable", [f"--checkpoint_dir={model_dir}/checkpoint_{last}",
                                       f"--variable_path={PROMPT_VARIABLE}", f"--output_path={extracted}"], tmp_path)
  np.testing.assert_array_equal(_load(extracted), expected)

  # The sweep's results collected from the gs:// run folder into a gs:// CSV.
  spec = {"name": "gcs_test", "output_dir": spec_dir, "gin_files": ["models/t5_1_1_tiny_prompt.gin"],
          "sizes": {"tiny": {"num_params": 1000, "checkpoint": inputs["checkpoint"]}},
          "tasks": {"gcs_test": {"name": "gcs_test_sentiment", "module": "gcs_tasks", "metric": "accuracy"}},
          "methods": {"prompt_tuning": {}},
          "defaults": {"seeds": [0], "prompt_length": 3, "prompt_init": "from_class_labels"}}
  (tmp_path / "spec.json").write_text(json.dumps(spec))
  collected = run_cli("sweeps", ["collect", str(tmp_path / "spec.json")], tmp_path)
  assert "wrote 1 result(s)" in collected.stdout, collected.stdout
  table = epath.Path(f"{spec_dir}/results.csv").read_text().splitlines()
  assert len(table) == 2 and run_id in table[1], table

  # One trainer per MODEL_DIR on gs:// too: a claim held by a live process refuses a second trainer at once.
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
  try:
    now = time.time()
    epath.Path(f"{model_dir}/{CLAIM_FILE}").write_bytes(Holder(socket.gethostname(), holder.pid, None, now, now)
                                                        .encode())
    refused = run_cli("train", _train_flags(inputs, model_dir, last + 2), tmp_path, check=False)
  finally:
    holder.kill()
    holder.wait()
  line = refused.stderr.strip().splitlines()[-1]
  assert refused.returncode == errors.EXIT_USER_ERROR and "Traceback" not in refused.stderr, refused.stderr[-3000:]
  assert line.startswith(f"error: MODEL_DIR='{model_dir}' is in use") and f"pid {holder.pid} on host" in line, line
  assert _steps(gcs, f"sweep/{run_id}/") == [7, last]  # nothing trained, nothing deleted
