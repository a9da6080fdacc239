"""Prompt recycling (`serving.recycling`, `scripts.recycle_prompt`) between two frozen models."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cli_utils import run_cli, write_tiny_t5x_checkpoint
from prompt_tuning.runtime.checkpoints.restore import load_checkpoint_variable
from prompt_tuning.serving import recycling

RNG = np.random.default_rng(0)
SOURCE = RNG.normal(size=(300, 8)).astype(np.float32)
MAP = RNG.normal(size=(8, 6)).astype(np.float32)
TARGET = SOURCE @ MAP  # the target model's embeddings are a linear image of the source's (narrower: 6 wide)
IDS = recycling.support_ids(300, num_words=200, word_offset=50)
PROMPT = (RNG.normal(size=(5, 200)) @ SOURCE[IDS] / 10).astype(np.float32)  # in the span of the support


@pytest.mark.parametrize("name", ["v2v-lin", "lin-comb"])
def test_linear_recyclers_recover_an_exact_linear_relation(name):
  np.testing.assert_allclose(recycling.recycle_prompt(PROMPT, SOURCE, TARGET, IDS, name), PROMPT @ MAP,
                             rtol=1e-4, atol=1e-4)


def test_mlp_recycler_learns_the_map():
  recycled = recycling.recycle_prompt(PROMPT, SOURCE, TARGET, IDS, "v2v-nn", batch_size=25, epochs=150,
                                      learning_rate=3e-3)
  expected = PROMPT @ MAP
  error = np.linalg.norm(recycled - expected) / np.linalg.norm(expected)
  assert recycled.shape == (5, 6) and error < 0.35, error


def test_support_ids_follow_the_word_list_and_name_bad_values(tmp_path):
  words = tmp_path / "words.json"
  words.write_text(json.dumps({"7": "the", "3": "a", "11": "of"}))
  np.testing.assert_array_equal(recycling.support_ids(20, num_words=2, word_offset=1, word_list=str(words)), [3, 11])
  with pytest.raises(ValueError, match=r"--word_offset=1 \+ --num_words=5 exceeds the 3 words"):
    recycling.support_ids(20, num_words=5, word_offset=1, word_list=str(words))
  with pytest.raises(ValueError, match=r"ids outside the embedding table's 10 rows"):
    recycling.support_ids(10, num_words=1, word_offset=0, word_list=str(words))
  with pytest.raises(ValueError, match=r"--recycler='v2v' is not one of"):
    recycling.make_recycler("v2v")


def test_recycle_prompt_cli_between_two_checkpoints(tmp_path):
  """Source and target: two tiny T5X checkpoints (different seeds); the CLI output equals the least-squares map
  computed here, and a prompt of the wrong width is refused with the fix."""
  source = write_tiny_t5x_checkpoint(tmp_path / "source", seed=1)
  target = write_tiny_t5x_checkpoint(tmp_path / "target", seed=2)
  words = tmp_path / "words.json"
  words.write_text(json.dumps({str(i): f"w{i}" for i in range(5, 305)}))
  prompt = tmp_path / "prompt.npy"
  np.save(prompt, RNG.normal(size=(3, 4)).astype(np.float32))
  out = tmp_path / "recycled.npy"
  flags = [f"--source_model={source}", f"--target_model={target}", f"--prompt_path={prompt}",
           f"--output_path={out}", "--recycler=v2v-lin", f"--filtered_word={words}", "--num_words=200",
           "--word_offset=100"]
  proc = run_cli("scripts.recycle_prompt", flags, tmp_path)
  tables = [np.asarray(load_checkpoint_variable(str(c), "target/token_embedder/embedding")) for c in (source, target)]
  rows = np.arange(105, 305)
  projection = np.linalg.lstsq(tables[0][rows].astype(np.float64), tables[1][rows].astype(np.float64), rcond=None)[0]
  np.testing.assert_allclose(np.load(out), np.load(prompt) @ projection, rtol=1e-4, atol=1e-5)
  assert "fitted on 200 words" in proc.stdout

  np.save(prompt, np.zeros((3, 5), np.float32))
  bad = run_cli("scripts.recycle_prompt", flags, tmp_path, check=False)
  assert bad.returncode != 0 and "pass the model the prompt was trained on as the source" in bad.stderr
