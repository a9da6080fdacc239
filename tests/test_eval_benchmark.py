"""`benchmarks.eval_time` at toy size: ours and the PyTorch peer compute the same scores and decodes from the
shared weights, the shared-encoder scoring equals the per-row one, and the CLI times and compares the jobs.
No timing is asserted."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import eval_jobs, eval_time
from benchmarks.eval_jobs import EvalShape

TOY = EvalShape(examples=4, input_length=8, prompt_length=3, candidates=2, label_length=2, decode_length=4, beams=2)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  return eval_jobs.write_shared_weights(tmp_path_factory.mktemp("eval_weights"), "tiny", TOY)


def _spec(job: str, weights) -> dict:
  return {"job": job, "shape": TOY.__dict__, "weights": weights, "dtype": "float32"}


def test_rank_rows_follow_seqio_rank_classification_layout():
  tokens = eval_jobs.eval_tokens(TOY, 100)
  rows = eval_jobs.rank_rows(tokens)
  assert rows["encoder_input_tokens"].shape == (8, 8)
  np.testing.assert_array_equal(rows["encoder_input_tokens"][0], rows["encoder_input_tokens"][1])
  np.testing.assert_array_equal(rows["decoder_target_tokens"][:2], tokens["labels"])
  assert (tokens["labels"][:, -1] == eval_jobs.EOS_ID).all() and len(set(tokens["labels"][:, 0])) == 2
  np.testing.assert_array_equal(rows["decoder_input_tokens"][:, 0], 0)


@pytest.mark.parametrize("job", ["rank", "greedy", "beam4"])
def test_ours_and_the_peer_compute_the_same_outputs(job, weights):
  pytest.importorskip("peft")
  ours = eval_jobs.OursEval(_spec(job, weights))
  peer = eval_jobs.PeerEval(_spec(job, weights))
  ours.run(1), peer.run(1)
  result = eval_time.agreement(job, ours.outputs(), peer.outputs(), TOY.candidates)
  assert result["agree"], result


def test_shared_encoder_scores_equal_per_row_scores_and_refuse_mixed_groups(weights):
  rank = eval_jobs.OursEval(_spec("rank", weights))
  shared = eval_jobs.OursEval(_spec("rank_shared", weights))
  rank.run(1), shared.run(1)
  np.testing.assert_allclose(shared.outputs(), rank.outputs(), rtol=1e-5, atol=1e-5)
  mixed = dict(shared.batch, encoder_input_tokens=np.roll(shared.batch["encoder_input_tokens"], 1, axis=0))
  scores = np.asarray(shared.fn(shared.params, mixed))
  assert np.isnan(scores).all()  # every group now pairs two different inputs
  with pytest.raises(ValueError, match="num_candidates=3"):  # 8 rows
    shared.model.score_candidates(shared.params, shared.batch, num_candidates=3)


def test_cli_times_a_job_against_its_peer_and_reports_agreement(tmp_path, capsys):
  """Through the CLI: `rank_shared` brings its peer (`peer:rank`, the same scores computed row by row)."""
  pytest.importorskip("peft")
  out = tmp_path / "eval.json"
  eval_time.main(["--size=tiny", "--examples=4", "--input_length=8", "--prompt_length=3", "--jobs=rank_shared",
                  "--rounds=2", f"--json={out}"])
  result = json.loads(out.read_text())
  runs = result["runs"]
  assert set(runs) == {"ours:rank_shared", "peer:rank"} and result["warmup_steps_per_round"] == 1
  ours = runs["ours:rank_shared"]
  assert ours["agree"] and ours["same_best_label"] == 1.0 and ours["ratio_to_peer"] > 0 and len(ours["s"]) == 2, ours
  assert "| rank_shared |" in capsys.readouterr().out


def test_cli_throughput_runs_the_train_cli_and_the_step_alone(tmp_path):
  """`benchmarks.cli_throughput` at toy size: the real train CLI (a subprocess, as a user runs it), the step alone
  before and after, the input pipeline alone (the evaluation's timing scalar: tests/test_train_cli.py)."""
  from benchmarks import cli_throughput
  out = tmp_path / "cli.json"
  summary = cli_throughput.main(["--size=tiny", "--batch=2", "--input_length=12", "--target_length=4",
                                 "--prompt_length=3", "--steps=6", "--stats_period=2", "--step_only_steps=2",
                                 "--no_eval", f"--json={out}"])
  assert json.loads(out.read_text())["cli_over_step_only"] == pytest.approx(summary["cli_over_step_only"])
  assert len(summary["cli_steps_per_s_by_period"]) == 2 and summary["cli_steps_per_s"] > 0
  assert len(summary["step_only_steps_per_s"]) == 2 and summary["input_pipeline_batches_per_s"] > 0
  assert summary["evaluate_seconds"] == []  # --no_eval
