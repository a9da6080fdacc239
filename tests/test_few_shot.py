"""Few-shot training subsets (`runtime/few_shot.py`, FEW_SHOT_K / FEW_SHOT_SEED): k per class, the same subset
whatever the call, example order or host count, resumable, evaluation untouched; through the train CLI."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import seqio
import tensorflow as tf

import cli_tasks
from cli_utils import MODEL_FLAGS, TASK_FLAGS, run_cli, tpu_dry_run, write_tiny_t5x_checkpoint
from prompt_tuning.runtime import few_shot, input_pipeline
from prompt_tuning.runtime.configs import DatasetConfig
from prompt_tuning.runtime.feature_converters import PassThroughEncDecFeatureConverter

LENGTHS = {"inputs": 12, "targets": 4}
REVERSED = "cli_test_task_reversed"


def _reversed(split: str, shuffle_files: bool = False, seed: int | None = None) -> tf.data.Dataset:
  rows = list(cli_tasks._examples(split, shuffle_files, seed).as_numpy_iterator())[::-1]
  return tf.data.Dataset.from_tensor_slices({k: [r[k] for r in rows] for k in ("inputs", "targets")})


if REVERSED not in seqio.TaskRegistry.names():  # the same examples in the opposite order
  base = seqio.get_mixture_or_task("cli_test_task")
  seqio.TaskRegistry.add(REVERSED, source=seqio.FunctionDataSource(_reversed, splits=["train", "validation"]),
                         preprocessors=base.preprocessors, output_features=base.output_features)


def config(k: int | None, seed: int = 0, task: str = "cli_test_task", batch_size: int = 4,
           per_class: bool = True) -> DatasetConfig:
  return DatasetConfig(task, LENGTHS, "train", batch_size, shuffle=True, seed=0, few_shot_k=k, few_shot_seed=seed,
                       few_shot_per_class=per_class)


def inputs_of(subset: few_shot.Subset) -> list[str]:
  return [ex["inputs_pretokenized"].decode() for ex in subset.examples]


def test_k_per_class_same_subset_on_every_call_and_in_any_example_order():
  few_shot.select.cache_clear()
  (subset, rate), = input_pipeline.few_shot_subsets(config(5, seed=3))
  assert rate == 1.0 and subset.counts == {"no": 5, "yes": 5} and len(subset.examples) == 10
  assert [ex["targets_pretokenized"].decode() for ex in subset.examples] == ["no"] * 5 + ["yes"] * 5
  few_shot.select.cache_clear()  # computed afresh, as by a restarted run or another host
  (again, _), = input_pipeline.few_shot_subsets(config(5, seed=3))
  assert again.fingerprint == subset.fingerprint and inputs_of(again) == inputs_of(subset)
  (flipped, _), = input_pipeline.few_shot_subsets(config(5, seed=3, task=REVERSED))
  assert inputs_of(flipped) == inputs_of(subset)  # chosen by content, not by position in the split
  (other, _), = input_pipeline.few_shot_subsets(config(5, seed=4))
  assert set(inputs_of(other)) != set(inputs_of(subset))
  (total, _), = input_pipeline.few_shot_subsets(config(7, seed=3, per_class=False))
  assert len(total.examples) == 7 and total.counts == {"*": 7}
  with pytest.raises(few_shot.FewShotError, match="FEW_SHOT_K=0"):
    input_pipeline.few_shot_subsets(config(0))


def _batches(cfg: DatasetConfig, shard_id: int, num_shards: int, n: int) -> list[dict[str, np.ndarray]]:
  converter = PassThroughEncDecFeatureConverter(pack=False)
  ds = input_pipeline.get_dataset(cfg, converter, shard_id, num_shards)
  return list(input_pipeline.numpy_batches(ds.take(n)))


def test_stream_covers_the_subset_each_epoch_and_hosts_split_the_same_global_batches():
  cfg = config(3, seed=1)  # 6 examples, batch 4: 12 batches are 8 epochs
  (subset, _), = input_pipeline.few_shot_subsets(cfg)
  one_host = _batches(cfg, 0, 1, 12)
  rows = [tuple(r[r != 0]) for b in one_host for r in b["encoder_input_tokens"]]
  kept = {tuple(ex["inputs"]) for ex in subset.examples}
  assert len(kept) == 6
  for epoch in range(8):  # every epoch shows each kept example once, in a new order
    assert sorted(rows[6 * epoch:6 * epoch + 6]) == sorted(kept)
  assert rows[:6] != rows[6:12]
  hosts = [_batches(cfg, i, 2, 12) for i in range(2)]  # two hosts, 2 rows each: the same global batches
  for step, batch in enumerate(one_host):
    interleaved = np.stack([hosts[i][step]["encoder_input_tokens"][j] for j in range(2) for i in range(2)])
    np.testing.assert_array_equal(interleaved, batch["encoder_input_tokens"])
  # A restarted run builds the pipeline afresh and skips the batches it trained on (here 5): the same stream.
  skipped = list(input_pipeline.numpy_batches(
      input_pipeline.get_dataset(cfg, PassThroughEncDecFeatureConverter(pack=False)).take(12), skip=5))
  assert len(skipped) == 7
  for a, b in zip(skipped, one_host[5:]):
    np.testing.assert_array_equal(a["encoder_input_tokens"], b["encoder_input_tokens"])


@pytest.fixture(scope="module")
def frozen_checkpoint(tmp_path_factory) -> pathlib.Path:
  return write_tiny_t5x_checkpoint(tmp_path_factory.mktemp("pretrained"))


def test_train_cli_few_shot_records_the_subset_evaluates_everything_and_refuses_another_on_resume(
    tmp_path, frozen_checkpoint):
  model_dir = tmp_path / "run"
  flags = [*MODEL_FLAGS, "--gin_file=prompts/random_uniform.gin", "--gin_file=runs/prompt_finetune.gin",
           *TASK_FLAGS, f"--gin.MODEL_DIR='{model_dir}'", f"--gin.INITIAL_CHECKPOINT_PATH='{frozen_checkpoint}'",
           "--gin.TRAIN_STEPS=5", "--gin.BATCH_SIZE=4", "--gin.PROMPT_LENGTH=3", "--gin.SAVE_PERIOD=2",
           "--gin.EVAL_PERIOD=2", "--gin.DROPOUT_RATE=0.0", "--gin.FEW_SHOT_K=2"]
  run_cli("train", [*flags, "--gin.FEW_SHOT_SEED=1"], tmp_path)
  (record,) = json.loads((model_dir / few_shot.RECORD_FILE).read_text())
  few_shot.select.cache_clear()
  (expected, _), = input_pipeline.few_shot_subsets(config(2, seed=1))
  assert record == expected.record() and record["counts"] == {"no": 2, "yes": 2}, record
  assert "FEW_SHOT_K = 2" in (model_dir / "config.gin").read_text()
  predictions = (model_dir / "inference_eval" / "cli_test_task-000005.jsonl").read_text().splitlines()
  assert len(predictions) == 8  # the whole validation split: few-shot applies to training only
  resumed = run_cli("train", [*flags, "--gin.FEW_SHOT_SEED=2", "--gin.TRAIN_STEPS=7"], tmp_path, check=False)
  assert resumed.returncode != 0 and few_shot.RECORD_FILE in resumed.stderr and "FEW_SHOT_SEED" in resumed.stderr, \
      resumed.stderr[-2000:]


# ------------------------------------------------------------------------------------------- sweep specs
SPECS = pathlib.Path(__file__).resolve().parents[1] / "prompt_tuning" / "sweeps" / "specs"


def test_cloud_tpu_few_shot_spec_dry_run_prints_every_k_and_subset_seed(tmp_path, capsys):
  path = str(SPECS / "few_shot.json")
  lines = tpu_dry_run(path, tmp_path, capsys)
  assert len(lines) == 3 * 4 * 3 * 3 * 3  # tasks x k x sizes x methods x seeds
  assert sum("FEW_SHOT_K=16" in l for l in lines) == 3 * 3 * 3 * 3
  from prompt_tuning.sweeps.spec import Spec
  commands = {c.run_id: dict(f[len("--gin."):].split("=", 1) for f in c.flags if f.startswith("--gin."))
              for c in Spec.load(path, output_dir=str(tmp_path)).commands()}
  for k in ("16", "32", "64"):
    for seed in (0, 1, 2):
      for method in ("prompt_tuning-len100-from_class_labels", "idpg", "model_tuning"):
        values = commands[f"rte_k{k}/xl/{method}/seed{seed}"]
        assert values["FEW_SHOT_K"] == k and values["FEW_SHOT_SEED"] == "%RANDOM_SEED", values
        assert values["RANDOM_SEED"] == str(seed) and values["MIXTURE_OR_TASK_NAME"] == "'taskless_super_glue_rte_v102'"
  full = [v for run_id, v in commands.items() if run_id.startswith("rte_all/")]
  assert len(full) == 3 * 3 * 3 and not any("FEW_SHOT_K" in v for v in full)
  assert sum("families/instance_pooled.gin" in l for l in lines) == len(lines) // 3


def test_micro_few_shot_spec_and_its_report_of_mean_and_spread_over_subsets(tmp_path, capsys):
  from prompt_tuning.sweeps import cli as sweeps_cli
  from prompt_tuning.sweeps import few_shot as few_shot_report
  from prompt_tuning.sweeps.spec import Spec
  path = str(SPECS / "micro_few_shot.json")
  assert sweeps_cli.main(["run", path, "--dry-run", "--output_dir", str(tmp_path)]) == 0
  assert len(capsys.readouterr().out.splitlines()) == 1 + 4 * 3 * 3  # the pretraining, then every run
  spec = Spec.load(path, output_dir=str(tmp_path))
  # Three subsets of k = 16 and one of the full split, two evaluations each (the last is "final").
  finals, bests = {0: 60.0, 1: 70.0, 2: 80.0}, {0: 65.0, 1: 90.0, 2: 85.0}
  for run in spec.runs():
    if run.method == "prompt_tuning" and (run.task == "sentiment_k16" or run.task == "sentiment_all" and not run.seed):
      folder = pathlib.Path(spec.run_dir(run.run_id)) / "inference_eval"
      folder.mkdir(parents=True)
      lines = [{"step": 1050, "accuracy": bests[run.seed]}, {"step": 1100, "accuracy": finals[run.seed]}]
      (folder / "demo_sentiment-metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
  assert few_shot_report.main([path, "--output_dir", str(tmp_path)]) == 0
  rows = list(__import__("csv").DictReader((tmp_path / "few_shot.csv").open()))
  assert [(r["k"], r["seeds"], r["final_mean"], r["final_std"], r["best_mean"]) for r in rows] == [
      ("16", "3", "70.0000", "10.0000", "80.0000"), ("all", "1", "60.0000", "", "65.0000")]
  text = (tmp_path / "few_shot.md").read_text()
  assert "| prompt_tuning | 70.0 ± 10.0 (80.0 ± 13.2) | 60.0 (65.0) |" in text, text
  assert (tmp_path / "few_shot.png").stat().st_size > 1000
