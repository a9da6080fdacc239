"""Prompt ensembling in one batched pass: majority vote for decodes, mean for scores (`serving.ensemble`)."""
from __future__ import annotations

import collections

import jax
import numpy as np
import pytest

import serving_utils as su
from cli_utils import run_cli
from prompt_tuning.serving.ensemble import PromptEnsemble, majority_vote

EOS = 1


@pytest.fixture(scope="module")
def setup():
  prompts = su.random_prompts(3, seed=1)
  model = su.bank_model(prompts, inference=PromptEnsemble(prompts))
  frozen = su.frozen_params(su.pretrained_checkpoint())
  return dict(prompts=prompts, frozen=frozen, score=jax.jit(model.score_batch), predict=jax.jit(model.predict_batch),
              batches=su.task_batches("cli_test_task"))


def _members(setup, prompts):
  """Each prompt alone: (scores, decoded texts) per example."""
  single_score, single_predict = su.reference()
  results = []
  for prompt in prompts:
    params = su.with_prompt(setup["frozen"], {"prompt": prompt})
    scores = su.per_example(lambda b: single_score(params, b), setup["batches"])
    texts = [su.decode(t) for t in su.per_example(lambda b: single_predict(params, b), setup["batches"])]
    results.append((np.array(scores), texts))
  return results


def _ensemble(setup, prompts):
  params = su.with_prompt(setup["frozen"], {"prompts": np.stack(prompts)})
  scores = su.per_example(lambda b: setup["score"](params, b), setup["batches"])
  texts = [su.decode(t) for t in su.per_example(lambda b: setup["predict"](params, b), setup["batches"])]
  return np.array(scores), texts


def _vote(texts_per_member):
  return [collections.Counter(column).most_common(1)[0][0] for column in zip(*texts_per_member)]


def test_identical_prompts_give_the_single_prompt_results(setup):
  (scores, texts), = _members(setup, setup["prompts"][:1])
  ens_scores, ens_texts = _ensemble(setup, [setup["prompts"][0]] * 3)
  np.testing.assert_allclose(ens_scores, scores, rtol=1e-6)
  assert ens_texts == texts


def test_different_prompts_vote_on_decodes_and_average_scores(setup):
  members = _members(setup, setup["prompts"])
  ens_scores, ens_texts = _ensemble(setup, setup["prompts"])
  np.testing.assert_allclose(ens_scores, np.mean([s for s, _ in members], axis=0), rtol=1e-5)
  assert ens_texts == _vote([t for _, t in members])
  assert any(len(set(column)) > 1 for column in zip(*[t for _, t in members]))  # the members do disagree


def test_majority_vote_counts_up_to_eos_and_breaks_ties_by_member_order():
  decodes = np.array([[[5, 1, 0], [6, 1, 0], [5, 1, 7]],  # members 0 and 2 agree (tokens after EOS ignored)
                      [[4, 1, 0], [5, 1, 0], [6, 1, 0]]])  # no majority: member 0
  best, agree = majority_vote(decodes, EOS)
  np.testing.assert_array_equal(best, [[5, 1, 0], [4, 1, 0]])
  np.testing.assert_array_equal(agree, [[True, False, True], [True, False, False]])


def test_ensemble_needs_a_list_of_prompts(setup):
  with pytest.raises(ValueError, match="ENSEMBLE_PROMPTS"):
    PromptEnsemble({"cli_test_task": setup["prompts"][0]})


def test_infer_cli_ensemble_is_the_vote_of_each_prompt_alone(setup, tmp_path):
  files = []
  for i, prompt in enumerate(setup["prompts"]):
    np.save(tmp_path / f"p{i}.npy", prompt)
    files.append(str(tmp_path / f"p{i}.npy"))
  out = tmp_path / "infer"
  run_cli("infer", su.cli_flags(su.pretrained_checkpoint(), "cli_test_task", "--gin_file=runs/infer.gin",
                                "--gin_file=serving/ensemble.gin", f"--gin.ENSEMBLE_PROMPTS={files}",
                                f"--gin.INFER_OUTPUT_DIR='{out}'"), tmp_path)
  rows = su.read_rows(out, "cli_test_task")
  assert [r["prediction"] for r in rows] == _vote([t for _, t in _members(setup, setup["prompts"])])
