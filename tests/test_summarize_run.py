"""`python -m prompt_tuning.scripts.summarize_run`: before/after/best of each metric from a run's evaluations."""
from __future__ import annotations

import json

import pytest

from prompt_tuning import errors
from prompt_tuning.scripts import summarize_run


def test_before_after_and_best(tmp_path, capsys):
  folder = tmp_path / "inference_eval"
  folder.mkdir()
  rows = [{"step": 1150, "accuracy": 90.0}, {"step": 1000, "accuracy": 0.0}, {"step": 1075, "accuracy": 95.5}]
  (folder / "demo_sentiment-metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  assert summarize_run.main([str(tmp_path), "--metric", "accuracy"]) == 0
  out = capsys.readouterr().out
  assert "demo_sentiment accuracy: before (step 1000) 0.00 -> after (step 1150) 90.00; best 95.50 at step 1075" in out


def test_missing_results_is_a_clear_error(tmp_path, capsys):
  with pytest.raises(SystemExit) as stop:
    summarize_run.main([str(tmp_path)])
  assert stop.value.code == errors.EXIT_USER_ERROR
  assert "No evaluation results under" in capsys.readouterr().err
