"""Mixed-task serving: a bank of per-task prompts on one frozen model (`prompt_tuning.serving.prompt_bank`)."""
from __future__ import annotations

import jax
import numpy as np
import pytest
import tensorflow as tf

import serving_utils as su
from cli_utils import run_cli
from prompt_tuning import infer
from prompt_tuning.runtime import evaluation
from prompt_tuning.runtime.checkpoints import save_t5x_checkpoint
from prompt_tuning.runtime.configs import DatasetConfig
from prompt_tuning.serving import prompt_bank

TASKS = ("cli_test_task", "serving_task_b")


@pytest.fixture(scope="module")
def setup():
  """The frozen tiny model, one prompt per task, a bank of them and the jitted single-prompt reference."""
  prompts = dict(zip(TASKS, su.random_prompts(2)))
  bank = su.bank_model(prompts)
  frozen = su.frozen_params(su.pretrained_checkpoint())
  return dict(prompts=prompts, frozen=frozen, bank=bank, bank_score=jax.jit(bank.score_batch),
              bank_params=su.with_prompt(frozen, {"prompts": np.stack(list(prompts.values()))}))


def test_each_row_uses_its_task_prompt(setup):
  _, batch = su.task_batches(TASKS[0])[0]
  ids = np.array([1, 0, 0, 1], np.int32)
  bank_scores = setup["bank_score"](setup["bank_params"], {**batch, "task_ids": ids})
  single_score, _ = su.reference()
  singles = [single_score(su.with_prompt(setup["frozen"], {"prompt": p}), batch) for p in setup["prompts"].values()]
  for task_id, scores in enumerate(singles):
    np.testing.assert_allclose(bank_scores[ids == task_id], scores[ids == task_id], rtol=1e-6)
  assert not np.allclose(*singles)  # the two prompts give different results, so a swap would show
  out_of_range = setup["bank_score"](setup["bank_params"], {**batch, "task_ids": np.array([0, 2, 0, 0], np.int32)})
  assert np.isnan(out_of_range[1]) and not np.isnan(out_of_range[0])


def test_bank_errors_name_the_fix(setup):
  _, batch = su.task_batches(TASKS[0])[0]
  with pytest.raises(ValueError, match="task_ids"):
    setup["bank"].score_batch(setup["bank_params"], batch)
  short = su.tiny_model(lambda: prompt_bank.PromptBank({"a": np.zeros((2, su.WIDTH))}, su.PROMPT_LENGTH))
  with pytest.raises(ValueError, match="PROMPT_LENGTH=3"):
    short.get_initial_variables(jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 4),
                                                        "decoder_input_tokens": (1, 4)})
  with pytest.raises(ValueError, match="BANK_PROMPTS"):
    setup["bank"].family.task_id("glue_rte")


def test_load_prompt_reads_npy_files_and_checkpoints(tmp_path):
  prompt = su.random_prompts(1)[0]
  with (tmp_path / "prompt").open("wb") as f:  # the reference's numpy exports have no suffix
    np.save(f, prompt)
  np.testing.assert_array_equal(prompt_bank.load_prompt(str(tmp_path / "prompt"))(), prompt)
  run = tmp_path / "run"
  checkpoint = save_t5x_checkpoint(str(run), 7, {"encoder": {"prompt": {"prompt": {"prompt": prompt}}}})
  np.testing.assert_array_equal(prompt_bank.load_prompt(checkpoint)(), prompt)
  np.testing.assert_array_equal(prompt_bank.load_prompt(str(run))(), prompt)  # a model dir: its latest step
  with pytest.raises(ValueError, match="has no variable"):
    prompt_bank.load_prompt(checkpoint, "encoder/prompt/prompt/other")()


def test_evaluator_tags_each_task_with_its_bank_id(setup):
  ids = {"serving_task_b": 0, "cli_test_task": 1}  # not the mixture's order
  prompts = setup["prompts"]
  bank = su.bank_model({t: prompts[t] for t in ids})
  cfg = DatasetConfig("serving_test_mixture", None, "validation", 4, module="serving_utils")
  evaluator = evaluation.make_evaluator(cfg, bank, None)
  for task in evaluator.eval_tasks:
    tags = {int(ex["task_ids"]) for _, ex in evaluator.cached_model_datasets[task.name].as_numpy_iterator()}
    assert tags == {ids[task.name]}
  one_task = su.bank_model({"cli_test_task": prompts["cli_test_task"]})
  with pytest.raises(ValueError, match="'serving_task_b' has no prompt in the bank"):
    evaluation.make_evaluator(cfg, one_task, None)


def test_infer_streams_take_the_tasks_in_turn():
  datasets = [(3, tf.data.Dataset.from_tensor_slices({"x": [10, 11, 12]})),
              (1, tf.data.Dataset.from_tensor_slices({"x": [20]}))]
  seen = []

  def run(stream):
    rows = [(int(i), int(ex["x"])) for i, ex in stream.as_numpy_iterator()]
    seen.extend(x for _, x in rows)
    return rows

  assert infer._run_mixed(run, datasets) == [{0: 10, 1: 11, 2: 12}, {0: 20}]
  assert seen == [10, 20, 11, 12]  # a batch of 2 would hold one example of each task


def test_infer_cli_serves_a_mixture_as_each_task_alone(setup, tmp_path):
  """One infer run, batches mixing both tasks, predicts exactly what each task's own prompt predicts alone."""
  files = {}
  for task, prompt in setup["prompts"].items():
    np.save(tmp_path / f"{task}.npy", prompt)
    files[task] = str(tmp_path / f"{task}.npy")
  out = tmp_path / "infer"
  run_cli("infer", su.cli_flags(su.pretrained_checkpoint(), "serving_test_mixture", "--gin_file=runs/infer.gin",
                                "--gin_file=serving/prompt_bank.gin", f"--gin.BANK_PROMPTS={files}",
                                f"--gin.INFER_OUTPUT_DIR='{out}'"), tmp_path)
  _, single_predict = su.reference()
  alone, swapped = {}, {}
  for task, other in (TASKS, TASKS[::-1]):
    batches = su.task_batches(task)
    for results, prompt in ((alone, setup["prompts"][task]), (swapped, setup["prompts"][other])):
      params = su.with_prompt(setup["frozen"], {"prompt": prompt})
      results[task] = [su.decode(t) for t in su.per_example(lambda b: single_predict(params, b), batches)]
    rows = su.read_rows(out, task)
    assert rows[1]["inputs"] == {"cli_test_task": "is bad 1", "serving_task_b": "level low 1"}[task]
    assert [r["prediction"] for r in rows] == alone[task]
  assert alone != swapped  # each task's prompt matters, so serving the wrong one would fail the test
