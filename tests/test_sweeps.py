"""Sweeps: spec expansion into runs and CLI commands, the local and tpu backends, result collection (best
validation score per run) into CSV, and the Figure 1 / Figure 3 style plots."""
from __future__ import annotations

import copy
import json
import pathlib
import re
import shlex
import sys

import numpy as np
import pytest

from cli_utils import BYTE_VOCAB_ROWS, TESTS_DIR, cli_env, write_tiny_t5x_checkpoint
from prompt_tuning.launch import tpu
from prompt_tuning.models import get_config, t5
from prompt_tuning.sweeps import backends, collect, plots
from prompt_tuning.sweeps import cli as sweeps_cli
from prompt_tuning.sweeps.spec import Command, Run, Spec, SpecError, gin_value

RAW = {
    "name": "test sweep",
    "output_dir": "/out",
    "gin_files": ["sweeps/demo_vocab.gin"],
    "bindings": {"BATCH_SIZE": 8, "LEARNING_RATE": 0.1},
    "sizes": {"a": {"gin_files": ["sweeps/sizes/micro_s.gin"], "checkpoint": "/ckpt/a/checkpoint_5"},
              "b": {"gin_files": ["sweeps/sizes/micro_m.gin"], "bindings": {"NUM_PARTITIONS": 2}}},
    "pretrain": {"task": "demo_pretrain", "module": "prompt_tuning.data.demo", "steps": 300,
                 "bindings": {"TASK_FEATURE_LENGTHS": {"inputs": 32, "targets": 32}}},
    "tasks": {"sent": {"name": "demo_sentiment", "module": "prompt_tuning.data.demo", "metric": "accuracy",
                       "bindings": {"CLASS_LABELS": ["negative", "positive"]}}},
    "methods": {"prompt_tuning": {"bindings": {"LEARNING_RATE": 0.3, "TRAIN_STEPS": 400}},
                "model_tuning": {"bindings": {"TRAIN_STEPS": 400}}, "prompt_design": {"bindings": {"NUM_SHOTS": 2}}},
    "defaults": {"seeds": [0, 1], "prompt_length": 4, "prompt_init": "from_class_labels"},
    "grids": [{"name": "scaling"},
              {"name": "length", "methods": ["prompt_tuning"], "prompt_lengths": [1, 4]},
              {"name": "init", "methods": ["prompt_tuning"], "sizes": ["b"], "seeds": [0],
               "prompt_inits": ["random_uniform", "from_class_labels"]}],
    "tpu": {"zone": "us-central2-b", "tpus": {"a": "tpu-a", "b": "tpu-b"}},
}


def flag_values(flags) -> dict[str, str]:
  return dict(f[len("--gin."):].split("=", 1) for f in flags if f.startswith("--gin."))


# ----------------------------------------------------------------------------------------------------- spec
def test_grids_expand_to_unique_runs():
  runs = Spec(RAW).runs()
  # scaling: 2 sizes x 3 methods x 2 seeds; length 1 adds 2 x 2 prompt tuning runs (length 4 is the default);
  # random_uniform adds one (size b, seed 0); the rest coincide with runs already listed.
  assert len(runs) == 12 + 4 + 1 == len({r.run_id for r in runs})
  assert Run("sent", "b", "prompt_tuning", 0, 4, "random_uniform") in runs
  assert Run("sent", "a", "prompt_tuning", 1, 1, "from_class_labels").run_id == (
      "sent/a/prompt_tuning-len1-from_class_labels/seed1")
  assert Run("sent", "a", "model_tuning", 1).run_id == "sent/a/model_tuning/seed1"


def test_prompt_tuning_command():
  spec = Spec(RAW)
  cmd = spec.command(Run("sent", "b", "prompt_tuning", 1, 1, "from_class_labels"))
  assert cmd.module == "train" and cmd.run_dir == "/out/sent/b/prompt_tuning-len1-from_class_labels/seed1"
  assert [f for f in cmd.flags if f.startswith("--gin_file=")] == [
      "--gin_file=models/t5_1_1_prompt.gin", "--gin_file=sweeps/sizes/micro_m.gin", "--gin_file=sweeps/demo_vocab.gin",
      "--gin_file=prompts/from_class_labels.gin", "--gin_file=runs/prompt_finetune.gin"]
  values = flag_values(cmd.flags)
  assert values["MODEL_DIR"] == repr(cmd.run_dir) and values["PROMPT_LENGTH"] == "1"
  assert values["INITIAL_CHECKPOINT_PATH"] == "'/out/pretrain/b/checkpoint_300'"  # b is pretrained by the sweep
  assert values["RANDOM_SEED"] == values["SHUFFLE_SEED"] == "1"
  assert values["LEARNING_RATE"] == "0.3"  # the method's binding comes last and wins over the spec's
  assert values["NUM_PARTITIONS"] == "2" and values["CLASS_LABELS"] == "['negative', 'positive']"
  assert sum(f.startswith("--gin.LEARNING_RATE=") for f in cmd.flags) == 1


def test_model_tuning_and_prompt_design_commands():
  spec = Spec(RAW)
  mt = spec.command(Run("sent", "a", "model_tuning", 0))
  assert mt.flags[0] == "--gin_file=models/t5_1_1.gin" and "--gin_file=runs/finetune.gin" in mt.flags
  assert flag_values(mt.flags)["INITIAL_CHECKPOINT_PATH"] == "'/ckpt/a/checkpoint_5'"
  assert "PROMPT_LENGTH" not in flag_values(mt.flags)
  pd = spec.command(Run("sent", "a", "prompt_design", 1))
  values = flag_values(pd.flags)
  assert pd.module == "eval" and "--gin_file=baselines/prompt_design.gin" in pd.flags
  assert values["PROMPT_DESIGN_TASK"] == "'demo_sentiment'" and values["SHOTS_SEED"] == "1"
  assert values["EVAL_OUTPUT_DIR"] == "'/out/sent/a/prompt_design/seed1/inference_eval'"
  assert values["utils.DatasetConfig.split"] == "'validation'" and values["NUM_SHOTS"] == "2"
  assert "MIXTURE_OR_TASK_NAME" not in values and "MODEL_DIR" not in values


def test_custom_train_method_runs_its_own_gin_files():
  raw = copy.deepcopy(RAW)
  raw["methods"]["prefix"] = {"model_gin": "models/t5_1_1_prompt.gin", "gin_files": ["families/prefix.gin"],
                              "run_gin": "runs/prompt_finetune.gin",
                              "bindings": {"PROMPT_LENGTH": 5, "LEARNING_RATE": 0.01}}
  raw["methods"]["ia3"] = {"gin_files": ["families/ia3.gin"], "run_gin": "runs/ia3_finetune.gin"}
  assert Spec({**raw, "grids": None}).method_names() == [
      "prompt_tuning", "model_tuning", "prompt_design", "prefix", "ia3"]  # built-in first, then the spec's order
  raw["grids"] = [{"name": "families", "methods": ["model_tuning", "prefix", "ia3"], "sizes": ["a"], "seeds": [0]}]
  spec = Spec(raw)
  assert [r.run_id for r in spec.runs()] == ["sent/a/model_tuning/seed0", "sent/a/prefix/seed0", "sent/a/ia3/seed0"]
  prefix, ia3 = (spec.command(r) for r in spec.runs()[1:])
  assert prefix.module == "train" and [f for f in prefix.flags if f.startswith("--gin_file=")] == [
      "--gin_file=models/t5_1_1_prompt.gin", "--gin_file=sweeps/sizes/micro_s.gin", "--gin_file=sweeps/demo_vocab.gin",
      "--gin_file=families/prefix.gin", "--gin_file=runs/prompt_finetune.gin"]
  values = flag_values(prefix.flags)
  assert values["MODEL_DIR"] == "'/out/sent/a/prefix/seed0'" and values["RANDOM_SEED"] == values["SHUFFLE_SEED"] == "0"
  assert values["INITIAL_CHECKPOINT_PATH"] == "'/ckpt/a/checkpoint_5'"
  assert "CLASS_LABELS" not in values  # the task's binding: prefix tuning has no class-label initialiser to read it
  assert values["PROMPT_LENGTH"] == "5" and values["LEARNING_RATE"] == "0.01"  # the method's bindings win
  assert ia3.flags[0] == "--gin_file=models/t5_1_1.gin" and ia3.flags[3:5] == (
      "--gin_file=families/ia3.gin", "--gin_file=runs/ia3_finetune.gin")
  assert "PROMPT_LENGTH" not in flag_values(ia3.flags)
  files, run_gin, bindings = spec.train_config(spec.runs()[1])
  assert [f"--gin_file={f}" for f in (*files, run_gin)] == [f for f in prefix.flags if f.startswith("--gin_file=")]
  assert [f"--gin.{k}={gin_value(v)}" for k, v in bindings.items()] == [
      f for f in prefix.flags if f.startswith("--gin.")]


def test_each_command_gets_the_shared_bindings_its_gin_files_read():
  """The spec's, sizes' and tasks' bindings go to each command whose gin files read them (a CLI refuses a macro
  its gin files do not read): CLASS_LABELS with a class-label initialiser alone, training settings not to eval."""
  spec = Spec(RAW)
  labels = flag_values(spec.command(Run("sent", "b", "prompt_tuning", 0, 4, "from_class_labels")).flags)
  uniform = flag_values(spec.command(Run("sent", "b", "prompt_tuning", 0, 4, "random_uniform")).flags)
  mt = flag_values(spec.command(Run("sent", "a", "model_tuning", 0)).flags)
  pd = flag_values(spec.command(Run("sent", "a", "prompt_design", 0)).flags)
  assert labels["CLASS_LABELS"] == "['negative', 'positive']"
  assert not {"CLASS_LABELS"} & (set(uniform) | set(mt) | set(pd))
  assert mt["LEARNING_RATE"] == "0.1" and pd["BATCH_SIZE"] == "8" and "LEARNING_RATE" not in pd
  raw = copy.deepcopy(RAW)  # a gin file that is not on this machine: nothing can tell, every binding goes
  raw["sizes"]["a"]["gin_files"] = ["elsewhere/micro_s.gin"]
  assert flag_values(Spec(raw).command(Run("sent", "a", "model_tuning", 0)).flags)["CLASS_LABELS"] == (
      "['negative', 'positive']")


def test_pretraining_runs_first_for_sizes_without_a_checkpoint():
  commands = Spec(RAW).commands()
  assert [c.run_id for c in commands[:1]] == ["pretrain/b"]
  values = flag_values(commands[0].flags)
  assert values["INITIAL_CHECKPOINT_PATH"] == "None" and values["TRAIN_STEPS"] == "300"
  assert values["MIXTURE_OR_TASK_NAME"] == "'demo_pretrain'" and values["MODEL_DIR"] == "'/out/pretrain/b'"
  assert "--gin_file=runs/finetune.gin" in commands[0].flags


def test_output_dir_placeholder_and_override():
  raw = {**RAW, "sizes": {"a": {"checkpoint": "{output_dir}/ckpt"}}, "pretrain": None, "grids": None}
  spec = Spec(raw, output_dir="/elsewhere/")
  assert spec.output_dir == "/elsewhere" and spec.checkpoint("a") == "/elsewhere/ckpt"


@pytest.mark.parametrize("change,message", [
    (lambda r: r["methods"].update(fine_tuning={}), "Unknown method 'fine_tuning'"),
    (lambda r: r["methods"].update({"a/b": {"run_gin": "runs/finetune.gin"}}), "Custom method 'a/b' needs a name"),
    (lambda r: r["methods"].update(x={"run_gin": "r.gin", "gin_file": []}), "takes only ['bindings', 'gin_files'"),
    (lambda r: r["methods"]["model_tuning"].update(run_gin="r.gin"), "Method 'model_tuning' takes only 'bindings'"),
    (lambda r: r["grids"].append({"name": "x", "lengths": [1]}), "Unknown grid keys ['lengths']"),
    (lambda r: r["grids"].append({"name": "x", "sizes": ["c"]}), "unknown sizes ['c']"),
    (lambda r: r.pop("pretrain"), "Size 'b' needs 'checkpoint'"),
    (lambda r: r["tasks"]["sent"].pop("metric"), "Task 'sent' needs 'metric'"),
    (lambda r: r.update(size={}), "Unknown spec keys ['size']"),
    (lambda r: r.pop("output_dir"), "output_dir"),
    (lambda r: r["methods"]["model_tuning"]["bindings"].update(PROMPT_LENGTH=5),
     "Method 'model_tuning' binds PROMPT_LENGTH, which its gin files (models/t5_1_1.gin, sweeps/sizes/micro_s.gin, "
     "sweeps/demo_vocab.gin, runs/finetune.gin) do not read (the CLI would refuse it): drop it from its 'bindings'."),
    (lambda r: r["methods"]["prompt_design"]["bindings"].update(TRAIN_STEPS=5), "Method 'prompt_design' binds "
     "TRAIN_STEPS, which its gin files (models/t5_1_1.gin, sweeps/sizes/micro_s.gin, sweeps/demo_vocab.gin, "
     "runs/eval.gin, baselines/prompt_design.gin) do not read"),
    (lambda r: r["pretrain"]["bindings"].update(CLASS_LABELS=["a"]), "The 'pretrain' section binds CLASS_LABELS"),
    (lambda r: r["bindings"].update(BATCH_SIZ=4), "The spec's 'bindings' binds BATCH_SIZ, which no gin file reads; "
     "did you mean BATCH_SIZE?"),
    (lambda r: r["tasks"]["sent"]["bindings"].update(CLASS_LABEL=["a"]), "Task 'sent' binds CLASS_LABEL, which"),
])
def test_spec_errors_name_the_key(change, message):
  raw = copy.deepcopy(RAW)
  change(raw)
  with pytest.raises(SpecError, match=re.escape(message)):
    Spec(raw)


def test_gin_values():
  assert gin_value("a'b") == repr("a'b") and gin_value(None) == "None" and gin_value(True) == "True"
  assert gin_value({"inputs": 16}) == "{'inputs': 16}" and gin_value("@prompts.random_uniform()") == (
      "@prompts.random_uniform()")


def test_cli_reports_bad_json(tmp_path, capsys):
  bad = tmp_path / "spec.json"
  bad.write_text("{")
  assert sweeps_cli.main(["run", str(bad)]) == 2
  assert "not valid JSON" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- backends
def test_local_backend_runs_pending_commands_pretraining_first(tmp_path):
  spec = Spec(RAW, output_dir=str(tmp_path))
  seen: list[str] = []

  def runner(c: Command) -> int:
    seen.append(c.run_id)
    return 1 if c.run_id.endswith("model_tuning/seed1") else 0

  failed = backends.run_local(spec, jobs=2, runner=runner)
  assert seen[0] == "pretrain/b" and sorted(seen[1:]) == sorted(r.run_id for r in spec.runs())
  assert failed == ["sent/a/model_tuning/seed1", "sent/b/model_tuning/seed1"]


def test_local_backend_skips_done_runs(tmp_path, capsys):
  spec = Spec(RAW, output_dir=str(tmp_path))
  done = spec.command(spec.runs()[0])
  pathlib.Path(done.run_dir).mkdir(parents=True)
  (pathlib.Path(done.run_dir) / backends.DONE_FILE).write_text(json.dumps({"returncode": 0}))
  assert backends.run_local(spec, dry_run=True) == []
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == len(spec.commands()) - 1 and not any(done.run_dir + "'" in l for l in lines)
  assert shlex.split(lines[0])[:3] == [sys.executable, "-m", "prompt_tuning.train"]


def test_tpu_backend_dry_run_lines_are_gcloud_ssh_commands(capsys):
  spec = Spec(RAW)
  assert backends.run_tpu(spec, dry_run=True) == []
  lines = [shlex.split(l) for l in capsys.readouterr().out.splitlines()]
  assert len(lines) == len(spec.commands())
  remotes = [shlex.split(l[-1][len("--command="):]) for l in lines]
  assert lines[0][:6] == [*tpu.GCLOUD_TPU, "ssh", "tpu-b"]  # pretraining of b, on b's TPU
  assert "--zone=us-central2-b" in lines[0] and "--worker=all" in lines[0]
  assert remotes[0][-3:] == ["|", "tee", "~/jobs/pretrain.b.log"]  # foreground: a TPU runs its jobs in turn
  i = next(i for i, r in enumerate(remotes) if "prompt_tuning.eval" in r)
  expected = spec.command(Run("sent", lines[i][5][len("tpu-"):], "prompt_design", 0))
  start = remotes[i].index("python3")
  assert remotes[i][start:start + 3 + len(expected.flags) + 1] == [
      "python3", "-m", "prompt_tuning.eval", *expected.flags, "--multiprocess"]
  assert lines[i] == backends.tpu_argv(spec, expected)


def test_tpu_backend_runs_each_tpu_queue_in_order(tmp_path):
  spec = Spec(RAW, output_dir=str(tmp_path))
  calls: list[list[str]] = []
  assert backends.run_tpu(spec, runner=lambda argv: calls.append(list(argv)) or 0) == []
  names = [a[5] for a in calls]
  assert names[0] == "tpu-b" and sorted(set(names)) == ["tpu-a", "tpu-b"]
  assert all(backends.is_done(c) for c in spec.commands())
  calls.clear()
  backends.run_tpu(spec, runner=lambda argv: calls.append(list(argv)) or 0)
  assert not calls  # everything is done


def test_tpu_backend_needs_a_tpu_per_size():
  raw = copy.deepcopy(RAW)
  raw["tpu"]["tpus"].pop("a")
  with pytest.raises(ValueError, match="No TPU for size 'a'"):
    backends.run_tpu(Spec(raw), dry_run=True)


# -------------------------------------------------------------------------------------------------- collect
def test_best_of_is_early_stopping():
  lines = [{"step": 10, "accuracy": 50.0}, {"step": 20, "accuracy": 75.0}, {"step": 30, "accuracy": 75.0},
           {"step": 40, "accuracy": 60.0}, {"step": 50}]
  assert collect.best_of(lines, "accuracy") == (75.0, 20, 60.0)
  assert collect.best_of(lines, "loss") is None
  assert collect.best_of([{"step": 1, "ppl": 3.0}, {"step": 2, "ppl": 2.0}], "ppl", higher_is_better=False) == (
      2.0, 2, 2.0)


def _fake_results(spec: Spec, score) -> None:
  for run in spec.runs():
    folder = pathlib.Path(spec.run_dir(run.run_id)) / "inference_eval"
    folder.mkdir(parents=True)
    name = "demo_sentiment" if run.method != "prompt_design" else "demo_sentiment_prompt_design_2shot"
    lines = [{"step": s, "accuracy": score(run) - 10 + s} for s in range(0, 11, 5)]
    (folder / f"{name}-metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))


def _score(run: Run) -> float:
  size = {"a": 0, "b": 20}[run.size]
  method = {"model_tuning": 60, "prompt_tuning": 50, "prompt_design": 10}[run.method]
  return size + method + run.seed + (run.prompt_length or 0) + (run.prompt_init == "random_uniform") * -5


def test_collect_and_plot(tmp_path):
  raw = copy.deepcopy(RAW)
  raw["sizes"]["a"]["num_params"] = 1000
  raw["sizes"]["b"]["num_params"] = 50000
  spec = Spec(raw, output_dir=str(tmp_path))
  _fake_results(spec, _score)
  table, missing = collect.rows(spec)
  assert not missing and len(table) == len(spec.runs())
  csv_path = str(tmp_path / "results.csv")
  collect.write_csv(table, csv_path)
  back = collect.read_csv(csv_path)
  by_id = {r["run_id"]: r for r in back}
  for run in spec.runs():
    row = by_id[run.run_id]
    assert (row["best"], row["best_step"], row["final"], row["num_evals"]) == (_score(run), 10, _score(run), 3)
    assert row["prompt_length"] == run.prompt_length and row["num_params"] == {"a": 1000, "b": 50000}[run.size]

  fig = plots.figure1(back, 4, "from_class_labels")
  (ax,) = fig.axes
  assert ax.get_xscale() == "log"
  lines = {l.get_label(): l for l in ax.lines}
  assert set(lines) == {"Model Tuning", "Prompt Tuning", "Prompt Design"}
  np.testing.assert_allclose(lines["Prompt Tuning"].get_xdata(), [1000, 50000])
  np.testing.assert_allclose(lines["Prompt Tuning"].get_ydata(), [54.5, 74.5])  # mean over seeds 0 and 1
  np.testing.assert_allclose(lines["Model Tuning"].get_ydata(), [60.5, 80.5])

  ablation = plots.figure3(back, 4, "from_class_labels")
  length_ax, init_ax = ablation.axes
  length_lines = {l.get_label(): l.get_ydata() for l in length_ax.lines}
  assert set(length_lines) == {"Prompt length 1", "Prompt length 4"}
  np.testing.assert_allclose(length_lines["Prompt length 1"], [51.5, 71.5])
  init_lines = {l.get_label(): l.get_xdata() for l in init_ax.lines}
  assert set(init_lines) == {"random_uniform init", "from_class_labels init"}
  np.testing.assert_allclose(init_lines["random_uniform init"], [50000])

  assert sweeps_cli.main(["plot", str(tmp_path / "unused.json"), "--csv", csv_path]) == 2  # no such spec
  spec_file = tmp_path / "spec.json"
  spec_file.write_text(json.dumps(raw))
  assert sweeps_cli.main(["collect", str(spec_file), "--output_dir", str(tmp_path)]) == 0
  assert sweeps_cli.main(["plot", str(spec_file), "--output_dir", str(tmp_path)]) == 0
  for name in ("results.csv", "figure1.png", "figure3.png"):
    assert (tmp_path / name).stat().st_size > 1000, name


def test_figure3_is_skipped_without_ablation():
  rows = [{"task": "t", "eval": "t", "metric": "accuracy", "method": "prompt_tuning", "prompt_length": 4,
           "prompt_init": "x", "num_params": 10, "best": 1.0}]
  assert plots.figure3(rows, 4, "x") is None


def test_num_params_counted_from_the_size_gin_files():
  raw = {**RAW, "gin_search_paths": [str(TESTS_DIR / "gin")], "pretrain": None, "grids": None,
         "gin_files": ["byte_vocab_tiny.gin"], "sizes": {"tiny": {"gin_files": ["models/sizes/tiny.gin"],
                                                                   "checkpoint": "/c"}}}
  want = t5.num_params(get_config("tiny", vocab_size=BYTE_VOCAB_ROWS))
  assert collect.num_params(Spec(raw), "tiny") == want


# --------------------------------------------------------------------------------------------- end to end
def test_local_sweep_of_real_cli_runs(tmp_path):
  """Prompt tuning on the tiny model through the real train CLI, then its CSV row."""
  ckpt = write_tiny_t5x_checkpoint(tmp_path / "pretrained")
  raw = {"name": "tiny", "gin_search_paths": [str(TESTS_DIR / "gin")], "gin_files": ["byte_vocab_tiny.gin"],
         "bindings": {"BATCH_SIZE": 4, "DROPOUT_RATE": 0.0},
         "sizes": {"tiny": {"gin_files": ["models/sizes/tiny.gin"], "checkpoint": str(ckpt)}},
         "tasks": {"t": {"name": "cli_test_task", "module": "cli_tasks", "metric": "accuracy",
                         "bindings": {"TASK_FEATURE_LENGTHS": {"inputs": 12, "targets": 4}}}},
         "methods": {"prompt_tuning": {"bindings": {"TRAIN_STEPS": 7, "EVAL_PERIOD": 2, "SAVE_PERIOD": 100}}},
         "defaults": {"seeds": [0], "prompt_length": 3, "prompt_init": "random_uniform"}}
  spec = Spec(raw, output_dir=str(tmp_path / "sweep"))
  assert backends.run_local(spec, env=cli_env()) == [], [
      (pathlib.Path(c.run_dir) / "sweep.log").read_text()[-3000:] for c in spec.commands()]
  table, missing = collect.rows(spec)
  assert not missing and [r["method"] for r in table] == ["prompt_tuning"]
  pt = table[0]
  lines = collect.read_metrics(spec.run_dir(pt["run_id"]), "cli_test_task")
  assert [l["step"] for l in lines] == [5, 7] and pt["best"] == max(l["accuracy"] for l in lines)
  assert pt["num_params"] == t5.num_params(get_config("tiny", vocab_size=BYTE_VOCAB_ROWS))
