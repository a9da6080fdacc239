"""`python -m prompt_tuning.scripts.interpret_prompt` (the paper's Section 7) on prompts built from known
embeddings: nearest tokens by cosine, class-label marks and the share of rows with a class label."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from cli_utils import run_cli
from prompt_tuning import errors
from prompt_tuning.data import demo, demo_corpus
from prompt_tuning.runtime.checkpoints import save_t5x_checkpoint
from prompt_tuning.runtime.checkpoints.orbax_io import RunCheckpointer
from prompt_tuning.scripts import interpret_prompt

WORDS = demo_corpus.vocabulary_words()


def word_id(word: str) -> int:
  return 3 + WORDS.index(word)  # the demo vocabulary: pad, EOS, UNK, then the sorted words


def table_and_prompt() -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
  """A [256, 64] table whose label rows ("positive", "negative") are orthogonal to every other row, and a prompt
  of known rows. The padding rows past the 229 vocabulary ids must never be neighbours."""
  rng = np.random.default_rng(0)
  table = rng.normal(size=(demo.NUM_EMBEDDINGS, 64)).astype(np.float32)
  table[:, :2] = 0.0
  ids = {w: word_id(w) for w in ("positive", "negative", *WORDS[:3])}
  table[ids["positive"]] = np.eye(64)[0] * 2.0
  table[ids["negative"]] = np.eye(64)[1] * 0.5
  a, b, c = (ids[w] for w in WORDS[:3])
  prompt = np.stack([
      table[ids["positive"]],  # 0: a label row itself
      -3.0 * table[ids["negative"]] + 4.0 * table[ids["negative"]],  # 1: the same direction, rescaled
      table[a] + 0.01 * rng.normal(size=64),  # 2: near word a
      (table[b] + table[c]) / 2,  # 3: between words b and c
      table[ids["positive"]] + table[ids["negative"]],  # 4: between the two labels
  ]).astype(np.float32)
  table[240] = prompt[2]  # a padding row closer to row 2 than any word: left out
  return table, prompt, ids


def test_cli_on_an_orbax_checkpoint_and_its_numpy_export(tmp_path):
  table, prompt, ids = table_and_prompt()
  model_dir = tmp_path / "run"
  params = {"token_embedder": {"embedding": table}, "encoder": {"prompt": {"prompt": {"prompt": prompt}}}}
  checkpointer = RunCheckpointer(str(model_dir), export_regexes=(r".*prompt.*",))
  checkpointer.save(7, params, {"count": np.zeros((), np.int32)}, 0)
  checkpointer.close()
  exported = model_dir / "numpy_checkpoints" / "checkpoint_7" / "encoder.prompt.prompt.prompt"
  out = tmp_path / "neighbours.json"
  proc = run_cli("scripts.interpret_prompt", [
      f"--checkpoint={model_dir / 'checkpoint_7'}", f"--prompt_path={exported}", "--vocab=demo", "--k=2",
      "--class_labels=positive", "--class_labels=negative", f"--output_json={out}"], tmp_path)
  report = json.loads(out.read_text())
  nearest = [[n["id"] for n in row] for row in report["rows"]]
  a, b, c = (ids[w] for w in WORDS[:3])
  assert [row[0] for row in nearest[:3]] == [ids["positive"], ids["negative"], a]
  assert set(nearest[3]) == {b, c} and set(nearest[4]) == {ids["positive"], ids["negative"]}
  assert report["rows"][0][0]["similarity"] == pytest.approx(1.0)
  assert report["rows"][0][0]["class_label"] and not report["rows"][2][0]["class_label"]
  assert report["class_label_ids"] == {"positive": [ids["positive"]], "negative": [ids["negative"]]}
  assert (report["rows_with_class_label"], report["share_with_class_label"]) == (3, 0.6)
  lines = proc.stdout.splitlines()
  assert lines[-1] == "rows with a class label among their 2 nearest tokens: 3/5 (60.0%)"
  assert lines[3].startswith("row   0: ▁positive* (1.000)") and f"▁{WORDS[0]} (" in lines[5]


def assert_user_error(capsys, run, pattern: str) -> None:
  """`run()` exits with the user-error code and one line on stderr matching `pattern`."""
  capsys.readouterr()
  with pytest.raises(SystemExit) as stop:
    run()
  line = capsys.readouterr().err.strip()
  assert stop.value.code == errors.EXIT_USER_ERROR and "\n" not in line and re.search(pattern, line), line


def test_t5x_checkpoint_npy_prompt_and_clear_errors(tmp_path, capsys):
  table, prompt, ids = table_and_prompt()
  ckpt = save_t5x_checkpoint(str(tmp_path / "t5x"), 5, {"token_embedder": {"embedding": table}})
  np.save(tmp_path / "prompt.npy", prompt[:2])
  args = [f"--checkpoint={ckpt}", f"--prompt_path={tmp_path / 'prompt.npy'}", "--vocab=demo", "--k=1",
          "--class_labels=negative,positive"]
  report = interpret_prompt.main(args)
  assert [row[0].id for row in report.rows] == [ids["positive"], ids["negative"]] and report.share_with_label == 1.0
  assert "row   1: ▁negative* (1.000)" in capsys.readouterr().out
  np.save(tmp_path / "wide.npy", np.zeros((3, 65), np.float32))
  wide = [*args[:1], f"--prompt_path={tmp_path / 'wide.npy'}", *args[2:]]
  assert_user_error(capsys, lambda: interpret_prompt.main(wide),
                    r"prompt \(3, 65\) and the embedding table \(256, 64\) do not match.*"
                    "pass the checkpoint the prompt was trained on")
  assert_user_error(capsys, lambda: interpret_prompt.main([*args[:3], "--k=300"]),
                    "--k=300 must be between 1 and the vocabulary size")
  assert_user_error(capsys, lambda: interpret_prompt.main([*args[:4], "--class_labels=positive,nope"]),
                    r"Class label 'nope' tokenizes to \[2\], with no token of its own")
  assert_user_error(capsys, lambda: interpret_prompt.main([*args[:2], "--vocab=nope.model"]),
                    "--vocab='nope.model' is neither t5, mt5, demo nor")


def test_real_t5_vocabulary_and_tiny_t5x_checkpoint(tiny_t5x_checkpoint, t5_vocab_path, shared_data, tmp_path):
  """Rows equal to the embeddings of "positive" and "negative" (ids 1465, 2841) in the real tiny checkpoint."""
  table = np.load(shared_data / "t5x_tiny_checkpoint" / "token_embedder_embedding_32128x4.npy")
  np.save(tmp_path / "prompt.npy", table[[1465, 2841]])
  report = interpret_prompt.main([f"--checkpoint={tiny_t5x_checkpoint}", f"--prompt_path={tmp_path / 'prompt.npy'}",
                                  f"--vocab={t5_vocab_path}", "--k=3", "--class_labels=positive,negative"])
  assert [(row[0].id, row[0].token, row[0].class_label) for row in report.rows] == [
      (1465, "▁positive", True), (2841, "▁negative", True)]
  assert all(n.id < 32100 for row in report.rows for n in row)  # padding rows 32,100-32,127 left out


def test_released_prompt_against_a_base_width_table(t5_vocab_path, shared_data, tmp_path):
  """The released T5 1.1 Base RTE prompt (100 x 768) read as released, against a Base-width embedding table
  written here: random rows, except that "positive" and "negative" (ids 1465, 2841) point along prompt rows 0
  and 1, so those rows find them first; every row's nearest token is the cosine argmax over real tokens."""
  released = shared_data / "released_prompts" / "t5_1_1_lm100k_base" / "rte.npy"
  prompt = np.load(released)
  assert prompt.shape == (100, 768)
  table = np.random.default_rng(0).normal(size=(32128, 768)).astype(np.float32)
  table[1465], table[2841] = 3.0 * prompt[0], 0.5 * prompt[1]  # cosine ignores the scale
  np.save(tmp_path / "table.npy", table)
  report = interpret_prompt.main([f"--checkpoint={tmp_path / 'table.npy'}", f"--vocab={t5_vocab_path}",
                                  f"--prompt_path={released}", "--k=1", "--class_labels=positive,negative"])
  assert len(report.rows) == 100
  assert [(r[0].id, r[0].token, r[0].class_label) for r in report.rows[:2]] == [
      (1465, "▁positive", True), (2841, "▁negative", True)]
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  nearest = np.argmax(unit(prompt.astype(np.float64)) @ unit(table[:32100].astype(np.float64)).T, axis=-1)
  assert [r[0].id for r in report.rows] == nearest.tolist()
  labelled = int(np.isin(nearest, [1465, 2841]).sum())
  assert report.rows_with_label == labelled and report.share_with_label == pytest.approx(labelled / 100)
