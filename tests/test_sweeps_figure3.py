"""The Figure 3 specs (prompt length, initialiser, pretraining objective, LM adaptation steps) as Cloud TPU
dry runs, the spec's checkpoint variants and `adapt` section, and a tiny LM-adaptation sweep through the CLIs."""
from __future__ import annotations

import copy
import csv
import json
import pathlib
import shlex

import gin
import numpy as np
import pytest

from cli_utils import TESTS_DIR, run_sweep_command_in_process, write_tiny_t5x_checkpoint
from prompt_tuning import gin_utils
from prompt_tuning.launch import tpu
from prompt_tuning.runtime.checkpoints.orbax_io import RunCheckpointer
from prompt_tuning.runtime.checkpoints.formats import all_steps
from prompt_tuning.sweeps import backends, collect, plots
from prompt_tuning.sweeps import cli as sweeps_cli
from prompt_tuning.sweeps.spec import Run, Spec, SpecError

SPECS = pathlib.Path(__file__).resolve().parents[1] / "prompt_tuning" / "sweeps" / "specs"
SIZES = ("small", "base", "large", "xl", "xxl")
TASKS = ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc")
LM100K = "gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_{}/checkpoint_1100000"
SPAN = "gs://t5-data/pretrained_models/t5x/t5_1_1_{}/checkpoint_1000000"


def dry_run(spec: str, out: pathlib.Path, capsys) -> list[dict[str, str]]:
  """Each printed gcloud command as the remote train's `--gin.NAME` values, plus `tpu` and `gin_files`."""
  assert sweeps_cli.main(["run", str(SPECS / spec), "--backend=tpu", "--dry-run", f"--output_dir={out}"]) == 0
  commands = []
  for line in capsys.readouterr().out.splitlines():
    argv = shlex.split(line)
    assert argv[:len(tpu.GCLOUD_TPU) + 1] == [*tpu.GCLOUD_TPU, "ssh"], line
    remote = shlex.split(argv[-1][len("--command="):])
    flags = dict(f[len("--gin."):].split("=", 1) for f in remote if f.startswith("--gin."))
    flags["tpu"] = argv[len(tpu.GCLOUD_TPU) + 1]
    flags["gin_files"] = [f.split("=", 1)[1] for f in remote if f.startswith("--gin_file=")]
    commands.append(flags)
  return commands


def find(commands, **want):
  (match,) = [c for c in commands if all(c.get(k) == v for k, v in want.items())]
  return match


def test_figure3a_prompt_lengths(tmp_path, capsys):
  commands = dry_run("figure3a_prompt_length.json", tmp_path, capsys)
  assert len(commands) == 8 * 5 * 3 * 5  # tasks x sizes x seeds x lengths
  assert {c["PROMPT_LENGTH"] for c in commands} == {"1", "5", "20", "100", "150"}
  one = find(commands, MODEL_DIR=repr(f"{tmp_path}/rte/xxl/prompt_tuning-len150-from_class_labels/seed2"))
  assert one["INITIAL_CHECKPOINT_PATH"] == repr(LM100K.format("xxl")) and one["tpu"] == "pt-v4-64"
  assert one["MIXTURE_OR_TASK_NAME"] == "'taskless_super_glue_rte_v102'" and one["NUM_PARTITIONS"] == "16"
  assert one["TRAIN_STEPS"] == "1130000" and one["LEARNING_RATE"] == "0.3" and one["BATCH_SIZE"] == "32"
  assert "prompts/from_class_labels.gin" in one["gin_files"]


def test_figure3b_initialisers(tmp_path, capsys):
  commands = dry_run("figure3b_prompt_init.json", tmp_path, capsys)
  assert len(commands) == 8 * 5 * 3 * 3
  inits = {c["gin_files"][-2] for c in commands}  # the init gin comes right before the run gin
  assert inits == {"prompts/random_uniform.gin", "prompts/from_sampled_vocab.gin", "prompts/from_class_labels.gin"}
  wsc = find(commands, MODEL_DIR=repr(f"{tmp_path}/wsc/small/prompt_tuning-len100-from_sampled_vocab/seed0"))
  assert wsc["MIXTURE_OR_TASK_NAME"] == "'taskless_super_glue_wsc_and_dev_v102_simple'"


def test_figure3c_pretraining_objectives(tmp_path, capsys):
  commands = dry_run("figure3c_pretraining_objective.json", tmp_path, capsys)
  assert len(commands) == 8 * 5 * 3 * 3  # three objectives
  span = find(commands, MODEL_DIR=repr(
      f"{tmp_path}/rte/base-span_corruption/prompt_tuning-len100-from_class_labels/seed1"))
  assert span["MIXTURE_OR_TASK_NAME"] == "'taskless_super_glue_rte_v102'"
  assert span["INITIAL_CHECKPOINT_PATH"] == repr(SPAN.format("base"))
  assert span["TRAIN_STEPS"] == "1030000"  # 30k steps from the span-corruption checkpoint (step 1M)
  sentinel = find(commands, MODEL_DIR=repr(
      f"{tmp_path}/rte_sentinel/base-span_corruption/prompt_tuning-len100-from_class_labels/seed1"))
  assert sentinel["MIXTURE_OR_TASK_NAME"] == "'taskless_super_glue_rte_v102_sentinel'"
  assert sentinel["INITIAL_CHECKPOINT_PATH"] == repr(SPAN.format("base")) and sentinel["TRAIN_STEPS"] == "1030000"
  lm = find(commands, MODEL_DIR=repr(f"{tmp_path}/rte/base/prompt_tuning-len100-from_class_labels/seed1"))
  assert lm["INITIAL_CHECKPOINT_PATH"] == repr(LM100K.format("base")) and lm["TRAIN_STEPS"] == "1130000"
  assert {c["MIXTURE_OR_TASK_NAME"] for c in commands if "_sentinel/" in c["MODEL_DIR"]} == {
      f"'taskless_super_glue_{t}_v102_sentinel'" for t in TASKS if t != "wsc"} | {
      "'taskless_super_glue_wsc_and_dev_v102_simple_sentinel'"}


def test_figure3d_lm_adaptation_steps(tmp_path, capsys):
  commands = dry_run("figure3d_lm_adaptation_steps.json", tmp_path, capsys)
  assert len(commands) == 5 + 8 * 5 * 3 * 4  # one adaptation per size, then four checkpoints
  adapt = commands[:5]  # first: the prompt runs start from their checkpoints
  assert [c["MODEL_DIR"] for c in adapt] == [repr(f"{tmp_path}/pretrain/adapt/{s}") for s in SIZES]
  xl = adapt[3]
  assert xl["gin_files"][-1] == "runs/lm_adapt.gin" and xl["MIXTURE_OR_TASK_NAME"] == "'c4_v220_prefix_lm'"
  assert xl["INITIAL_CHECKPOINT_PATH"] == repr(SPAN.format("xl")) and xl["NUM_PARTITIONS"] == "4"
  assert (xl["TRAIN_STEPS"], xl["SAVE_PERIOD"], xl["KEEP_CHECKPOINTS"]) == ("1100000", "10000", "None")
  runs = commands[5:]
  assert {c["INITIAL_CHECKPOINT_PATH"] for c in runs if "/xl" in c["MODEL_DIR"]} == {
      repr(SPAN.format("xl")), *(repr(f"{tmp_path}/pretrain/adapt/xl/checkpoint_{1000000 + k}")
                                 for k in (10000, 50000, 100000))}
  ten = find(runs, MODEL_DIR=repr(f"{tmp_path}/cb/xl-lm_adapt_10k/prompt_tuning-len100-from_class_labels/seed0"))
  assert ten["INITIAL_CHECKPOINT_PATH"] == repr(f"{tmp_path}/pretrain/adapt/xl/checkpoint_1010000")
  assert ten["TRAIN_STEPS"] == "1040000"  # 30k prompt-tuning steps from step 1,010,000
  zero = find(runs, MODEL_DIR=repr(f"{tmp_path}/cb/xl/prompt_tuning-len100-from_class_labels/seed0"))
  assert zero["INITIAL_CHECKPOINT_PATH"] == repr(SPAN.format("xl")) and zero["TRAIN_STEPS"] == "1030000"


# ----------------------------------------------------------------------------------------- spec semantics
RAW = {"output_dir": "/out",
       "sizes": {"a": {"checkpoint": "/c/a/checkpoint_100", "checkpoints": {"other": "/c/o/checkpoint_40"}}},
       "tasks": {"t": {"name": "demo_sentiment", "metric": "accuracy"}},
       "methods": {"prompt_tuning": {"bindings": {"TRAIN_STEPS": 130}}},
       "adapt": {"task": "lm", "steps": 20, "keep": {"early": 4, "late": 20}},
       "grids": [{"checkpoints": ["default", "other", "early"]}]}


def test_checkpoint_variants_name_the_run_and_shift_train_steps():
  spec = Spec(RAW)
  assert [r.run_id for r in spec.runs()] == [
      "t/a/prompt_tuning-len100-from_class_labels/seed0", "t/a-other/prompt_tuning-len100-from_class_labels/seed0",
      "t/a-early/prompt_tuning-len100-from_class_labels/seed0"]
  steps = [spec.train_config(r)[2]["TRAIN_STEPS"] for r in spec.runs()]
  assert steps == [130, 70, 134]  # always 30 steps from the run's own checkpoint
  assert spec.checkpoint("a", "early") == "/out/pretrain/adapt/a/checkpoint_104"
  (adapt,) = spec.adapt_commands()
  flags = dict(f[len("--gin."):].split("=", 1) for f in adapt.flags if f.startswith("--gin."))
  assert (flags["TRAIN_STEPS"], flags["SAVE_PERIOD"], flags["KEEP_CHECKPOINTS"]) == ("120", "4", "None")
  assert spec.commands()[0] == adapt and Run("t", "a", "model_tuning", 0, checkpoint="x").run_id == (
      "t/a-x/model_tuning/seed0")


def test_collect_and_plot_keep_checkpoint_variants_apart(tmp_path, capsys):
  """Runs from three checkpoints of one size: `collect` names each run's checkpoint, and Figure 3's panel
  draws one point per checkpoint at its own mean over seeds (hand-written metrics: 60 + 10 k + seed)."""
  raw = {**copy.deepcopy(RAW), "output_dir": str(tmp_path), "defaults": {"seeds": [0, 2]}}
  raw["sizes"]["a"]["num_params"] = 1000
  spec = Spec(raw)
  for k, run in enumerate(r for r in spec.runs()):
    folder = tmp_path / run.run_id / "inference_eval"
    folder.mkdir(parents=True)
    value = 60.0 + 10 * (k // 2) + run.seed  # the runs come seed by seed within each checkpoint
    (folder / "demo_sentiment-metrics.jsonl").write_text(json.dumps({"step": 130, "accuracy": value}) + "\n")
  spec_file = tmp_path / "spec.json"
  spec_file.write_text(json.dumps(raw))
  assert sweeps_cli.main(["collect", str(spec_file)]) == 0
  with open(tmp_path / "results.csv") as f:
    rows = sorted((r["checkpoint"], int(r["seed"]), float(r["best"])) for r in csv.DictReader(f))
  assert rows == [("", 0, 60.0), ("", 2, 62.0), ("early", 0, 80.0), ("early", 2, 82.0), ("other", 0, 70.0),
                  ("other", 2, 72.0)]
  fig = plots.figure3(collect.read_csv(str(tmp_path / "results.csv")), 100, "from_class_labels")
  (ax,) = fig.axes
  assert ax.get_title().startswith("checkpoint (prompt length 100")
  means = {l.get_label(): l.get_ydata().tolist() for l in ax.lines}
  assert means == {"default checkpoint": [61.0], "other checkpoint": [71.0], "early checkpoint": [81.0]}


@pytest.mark.parametrize("change, message", [
    (lambda r: r["grids"][0].update(checkpoints=["nope"]), "no checkpoint named 'nope'"),
    (lambda r: r["sizes"]["a"]["checkpoints"].update(other="/c/o/final"), "Cannot tell the step of checkpoint"),
    (lambda r: r["adapt"]["keep"].update(late=21), r"keeps \{'late': 21\}: each needs steps in 1..steps=20"),
    (lambda r: r["sizes"]["a"]["checkpoints"].update({"a b": "/c/checkpoint_1"}), r"names checkpoints \['a b'\]"),
    (lambda r: r["adapt"].update({"from": "early"}), "one of its own 'keep' names"),
    (lambda r: r["adapt"].pop("task"), "The 'adapt' section needs 'task'"),
])
def test_checkpoint_variant_errors_name_the_fix(change, message):
  raw = copy.deepcopy(RAW)
  change(raw)
  with pytest.raises(SpecError, match=message):
    Spec(raw)


# --------------------------------------------------------------------------------------------- end to end
def test_lm_adapt_gin_keeps_the_figure3d_steps(monkeypatch):
  import __main__  # pylint: disable=g-import-not-at-top
  from prompt_tuning import train  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(__main__, "train", train.train, raising=False)  # run gins bind `__main__.train`, as T5X
  gin.clear_config(clear_constants=True)
  try:
    with gin.config.interactive_mode():  # a CLI run in this process may have registered `__main__.train` first
      gin_utils.parse_gin(["models/t5_1_1_small.gin", "runs/lm_adapt.gin"], ["MODEL_DIR = '/m'",
                                                                              "INITIAL_CHECKPOINT_PATH = '/c'"], [])
    task, period = gin.query_parameter("%MIXTURE_OR_TASK_NAME"), gin.query_parameter("%SAVE_PERIOD")
    end, keep = gin.query_parameter("%TRAIN_STEPS"), gin.query_parameter("%KEEP_CHECKPOINTS")
  finally:
    gin.clear_config(clear_constants=True)
  assert task == "c4_v220_prefix_lm" and keep is None
  assert {1010000, 1050000, 1100000} <= set(range(1000000, end + 1, period))  # from T5 1.1's step 1M


def test_lm_adaptation_sweep_keeps_its_steps_and_prompt_tunes_from_them(tmp_path):
  """LM adaptation (runs/lm_adapt.gin) of a tiny checkpoint, then prompt tuning from one of its kept steps."""
  ckpt = write_tiny_t5x_checkpoint(tmp_path / "pretrained")  # step 3
  raw = {"name": "tiny", "gin_search_paths": [str(TESTS_DIR / "gin")], "gin_files": ["byte_vocab_tiny.gin"],
         "bindings": {"BATCH_SIZE": 4, "DROPOUT_RATE": 0.0, "EVAL_PERIOD": 0},
         "sizes": {"tiny": {"gin_files": ["models/sizes/tiny.gin"], "checkpoint": str(ckpt)}},
         "adapt": {"task": "test_prefix_lm", "module": "prefix_lm_tasks", "steps": 4, "keep": {"lm2": 2, "lm4": 4},
                   "bindings": {"TASK_FEATURE_LENGTHS": {"inputs": 16, "targets": 16}}},
         "tasks": {"t": {"name": "cli_test_task", "module": "cli_tasks", "metric": "accuracy",
                         "bindings": {"TASK_FEATURE_LENGTHS": {"inputs": 12, "targets": 4}}}},
         "methods": {"prompt_tuning": {"bindings": {"TRAIN_STEPS": 5, "SAVE_PERIOD": 100}}},
         "defaults": {"seeds": [0], "prompt_length": 3, "prompt_init": "random_uniform"},
         "grids": [{"checkpoints": ["lm2"]}]}
  spec = Spec(raw, output_dir=str(tmp_path / "sweep"))
  assert backends.run_local(spec, runner=run_sweep_command_in_process) == [], [
      (pathlib.Path(c.run_dir) / "sweep.log").read_text()[-3000:] for c in spec.commands()]
  adapted = pathlib.Path(spec.run_dir("pretrain/adapt/tiny"))
  assert all_steps(adapted) == [3, 5, 7]  # every 2 steps (gcd of the kept steps), none deleted
  first, _, _ = RunCheckpointer(str(adapted)).restore_numpy(3)
  last, _, _ = RunCheckpointer(str(adapted)).restore_numpy(7)
  changed = [not np.array_equal(a, b) for a, b in zip(_leaves(first), _leaves(last))]
  assert len(changed) > 10 and all(changed)  # every weight trains, not only a prompt
  (run,) = spec.runs()
  run_dir = pathlib.Path(spec.run_dir(run.run_id))
  frozen = json.loads((run_dir / "frozen_weights.json").read_text())
  assert frozen["path"] == str(adapted / "checkpoint_5")
  assert all_steps(run_dir) == [7]  # TRAIN_STEPS 5 counts from step 3: 2 steps from checkpoint_5 end at 7


def _leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree_util.tree_leaves(tree)
