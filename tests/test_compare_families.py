"""compare_families: its runs are a sweep spec (each family a method, the gin files and bindings its table names)
run through the sweeps CLI; the script keeps the report."""
from __future__ import annotations

import json

from prompt_tuning.scripts import compare_families as cf
from prompt_tuning.sweeps.spec import Spec

DEMO_MODELS = {"models/t5_1_1_demo_prompt.gin": ["models/t5_1_1_prompt.gin", "models/sizes/demo.gin"],
               "models/t5_1_1_demo.gin": ["models/t5_1_1.gin", "models/sizes/demo.gin"]}


def flag_values(flags) -> dict[str, str]:
  return dict(f[len("--gin."):].split("=", 1) for f in flags if f.startswith("--gin."))


def test_every_family_is_a_method_of_one_spec_with_its_gin_files_and_bindings():
  spec = Spec(cf.families_spec(cf.FAMILIES, "/ckpt/checkpoint_1000", 30, 32, "/out"))
  runs = spec.runs()
  assert sorted(r.method for r in runs) == sorted(f.method for f in cf.FAMILIES)
  for family in cf.FAMILIES:
    (run,) = [r for r in runs if r.method == family.method]
    assert run.task == family.task and run.seed == 0
    command = spec.command(run)
    init = ["prompts/random_uniform.gin"] if family.method == "prompt_tuning" else []  # the model gin's default
    assert [f[len("--gin_file="):] for f in command.flags if f.startswith("--gin_file=")] == [
        *DEMO_MODELS[family.model_gin], *init, *family.gin_files, family.run_gin], family.name
    values = flag_values(command.flags)
    assert values["LEARNING_RATE"] == repr(family.learning_rate)
    assert (values["TRAIN_STEPS"], values["TRAIN_STEPS_RELATIVE"], values["EVAL_PERIOD"], values["SAVE_PERIOD"],
            values["BATCH_SIZE"], values["STATS_PERIOD"], values["DROPOUT_RATE"]) == (
                "0", "30", "10", "30", "32", "1", "0.0")
    assert values["INITIAL_CHECKPOINT_PATH"] == "'/ckpt/checkpoint_1000'"
    assert values["MIXTURE_OR_TASK_NAME"] == repr(family.task)
    assert values["MIXTURE_OR_TASK_MODULE"] == "'prompt_tuning.scripts.compare_families'"
    assert values["TASK_FEATURE_LENGTHS"] == "{'inputs': 16, 'targets': 2}"
    assert values.get("PROMPT_LENGTH") == (None if family.prompt_length is None else str(family.prompt_length))
    assert values["MODEL_DIR"] == repr(command.run_dir)
  wayward = next(f for f in cf.FAMILIES if f.name.startswith("wayward"))
  (run,) = [r for r in runs if r.method == wayward.method]
  assert flag_values(spec.command(run).flags)["PROMPT_TEXT"] == "'Is this review positive or negative?'"
  multitask = [r for r in runs if r.task == cf.SENTINEL_TASK]
  assert {r.method for r in multitask} == {"multi_task_shared_task_add", "mpt_shared_rank_1_task_matrix"}
  assert all(flag_values(spec.command(r).flags)["NUM_TASKS"] == "1" for r in multitask)


def test_only_some_families_and_their_tasks():
  families = [f for f in cf.FAMILIES if "prefix" in f.name]
  raw = cf.families_spec(families, "/c", 9, 4, "/out")
  assert list(raw["tasks"]) == [cf.TASK] and [r.run_id for r in Spec(raw).runs()] == [
      "demo_sentiment/demo/prefix_tuning_mlp_64/seed0"]


def test_table_rows():
  prefix, wayward = (next(f for f in cf.FAMILIES if f.name.startswith(n)) for n in ("prefix", "wayward"))
  results = [cf.Result(prefix, [(10, 50.0), (20, 100.0)], 64320, 294720, 23.14, 35.71),
             cf.Result(wayward, [(10, 49.0), (20, 100.0)], 192, 230592, 23.8, 17.3)]
  text = cf.table(results, "python -m x", "/c", 20, 32, 60.0)
  assert "| family | paper | gin | LR | accuracy (%) after 10 / 20 steps |" in text
  assert ("| prefix tuning (MLP 64) | Li & Liang 2021 | `families/prefix.gin` `PREFIX_HIDDEN_DIM=64` | 0.01 | "
          "50.0 / 100.0 | 64,320 | 21.82 | 23.1 | +35.7% |") in text.splitlines()
  assert ("| wayward prompts (gamma 0.01) | Khashabi et al. 2022 | `families/wayward.gin` "
          "`PROMPT_TEXT='Is this review positive or negative?'` | 0.3 | 49.0 / 100.0 | 192 | 0.08 | 23.8 | +17.3% |"
          ) in text.splitlines()


def test_main_runs_the_spec_through_the_sweeps_cli_then_reports(tmp_path, monkeypatch):
  calls = []

  def sweep(argv):
    calls.append(argv)
    return 0

  def result(spec, family, steps):
    return cf.Result(family, [(steps, 100.0)], 10, 100, 1.0, 2.0)

  monkeypatch.setattr(cf.sweeps_cli, "main", sweep)
  monkeypatch.setattr(cf, "family_result", result)
  out = tmp_path / "table.md"
  assert cf.main(["--only", "IA", "--steps", "6", "--checkpoint", "/c", "--output_dir", str(tmp_path / "sweep"),
                  "--output", str(out)]) == 0
  spec_path = tmp_path / "sweep" / "spec.json"
  assert calls == [["run", str(spec_path), "--backend=local"]]
  raw = json.loads(spec_path.read_text())
  assert list(raw["methods"]) == ["ia3"] and raw["bindings"]["TRAIN_STEPS_RELATIVE"] == 6
  assert "| IA³ | Liu et al. 2022 | `families/ia3.gin` | 0.3 | 100.0 |" in out.read_text()
  monkeypatch.setattr(cf.sweeps_cli, "main", lambda argv: 1)
  assert cf.main(["--only", "IA", "--checkpoint", "/c", "--output_dir", str(tmp_path / "sweep"),
                  "--output", str(out)]) == 1
