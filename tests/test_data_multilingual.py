"""XNLI and PAWS-X tasks produce mT5's exact text formats (TFDS mocked with hand-written examples), in every
language, in the zero-shot mixtures, and with the factorised prompts' language and task sentinels."""
from __future__ import annotations

import pytest
import seqio

import tfds_fakes
from tfds_fakes import examples, texts
from prompt_tuning.data import multilingual
from prompt_tuning.data import vocab

XNLI = multilingual.XNLI_LANGUAGES


def _xnli_row(n: int, label: int, languages=XNLI) -> dict:
  """Premise `P<n> <lang>` in every language; hypothesis `H<n> <lang>` in `languages` (XNLI's features)."""
  return {"premise": {l: f"P{n} {l}." for l in XNLI},
          "hypothesis": {"language": list(languages), "translation": [f"H{n} {l}." for l in languages]},
          "label": label}


def _paws_row(language: str, label: int) -> dict:
  return {"sentence1": f"A {language}  one.", "sentence2": f"B {language}.", "label": label}


TFDS_DATA = {
    ("multi_nli", "train"): [{"premise": "It rains.", "hypothesis": "It is  wet.", "label": 0}],
    # The second example has no Swahili hypothesis: Swahili keeps only the first.
    ("xnli", "validation"): [_xnli_row(1, 2), _xnli_row(2, 1, [l for l in XNLI if l != "sw"])],
    ("xnli", "test"): [_xnli_row(3, 0)],
    **{(f"paws_x_wiki/{l}", split): [_paws_row(l, i % 2)]
       for l in multilingual.PAWSX_LANGUAGES for i, split in enumerate(("train", "validation", "test"))},
    ("c4/multilingual", "fr"): [{"text": "Le chat dort sur le tapis rouge près de la porte.",
                                 "timestamp": "2020", "url": "u"}],
}


@pytest.fixture(scope="module")
def fake_tfds(t5_vocab_path):
  """The mocked TFDS; the mT5 vocabulary is the T5 SentencePiece model here (32,000 pieces, no extra ids)."""
  vocab.set_vocab_path(t5_vocab_path, kind="mt5")
  try:
    with tfds_fakes.serving(tfds_fakes.FakeTfds(TFDS_DATA, partial_builders=("c4",)), t5_vocab_path) as fake:
      yield fake
  finally:
    vocab.set_vocab_path(None, kind="mt5")


def test_xnli_trains_on_english_multinli_in_mt5s_format(fake_tfds):
  assert texts("mt5_xnli_train", "train") == [("xnli: premise: It rains. hypothesis: It is  wet.", "0")]
  assert texts("mt5_taskless_xnli_train", "train") == [("premise: It rains. hypothesis: It is  wet.", "0")]
  assert ("multi_nli", "1.1.0", "train") in fake_tfds.reads


def test_xnli_dev_test_per_language(fake_tfds, language="fr"):
  assert texts(f"mt5_xnli_dev_test.{language}") == [
      (f"xnli: premise: P1 {language}. hypothesis: H1 {language}.", "2"),
      (f"xnli: premise: P2 {language}. hypothesis: H2 {language}.", "1")]
  assert texts(f"mt5_xnli_dev_test.{language}", "test") == [
      (f"xnli: premise: P3 {language}. hypothesis: H3 {language}.", "0")]
  assert ("xnli", "1.1.0", "validation") in fake_tfds.reads


def test_xnli_drops_examples_without_the_language_and_all_langs_concatenates(fake_tfds):
  all_langs = texts("mt5_xnli_dev_test.all_langs")
  expected = [(f"xnli: premise: P{n} {l}. hypothesis: H{n} {l}.", label)  # language by language, as mT5
              for l in XNLI for n, label in ((1, "2"), (2, "1")) if (l, n) != ("sw", 2)]  # no Swahili hypothesis
  assert all_langs == expected and len(expected) == 2 * 15 - 1


def test_pawsx_per_language_and_english_train(fake_tfds):
  assert texts("mt5_paws", "train") == [("paws sentence1: A en  one. sentence2: B en.", "different_meaning")]
  assert texts("mt5_pawsx_dev_test.ja") == [("paws sentence1: A ja  one. sentence2: B ja.", "paraphrase")]
  assert texts("mt5_taskless_pawsx_dev_test.de", "test") == [("sentence1: A de  one. sentence2: B de.",
                                                               "different_meaning")]
  assert texts("mt5_pawsx_dev_test.all_langs") == [
      (f"paws sentence1: A {l}  one. sentence2: B {l}.", "paraphrase") for l in multilingual.PAWSX_LANGUAGES]
  assert ("paws_x_wiki/ko", "1.0.0", "validation") in fake_tfds.reads


def test_zero_shot_mixtures_train_on_english_and_evaluate_every_language():
  for name, train, languages in (("xnli", "xnli_train", XNLI), ("pawsx", "paws", multilingual.PAWSX_LANGUAGES)):
    mixture = seqio.get_mixture_or_task(f"mt5_taskless_{name}_zeroshot")
    assert {t.name for t in mixture.tasks} == {
        f"mt5_taskless_{train}", f"mt5_taskless_{name}_dev_test.all_langs",
        *(f"mt5_taskless_{name}_dev_test.{l}" for l in languages)}
    assert [t.name for t in mixture.tasks if "train" in t.splits] == [f"mt5_taskless_{train}"]
  assert not any(n.startswith(("xnli", "taskless_xnli", "paws")) for n in seqio.TaskRegistry.names())


def test_predictions_are_read_as_class_ids():
  xnli = seqio.get_mixture_or_task("mt5_xnli_dev_test.de")
  assert [xnli.postprocess_fn(p, example=None) for p in ("0", "2", "neutral")] == [0, 2, -1]
  paws = seqio.get_mixture_or_task("mt5_pawsx_dev_test.de")
  assert [paws.postprocess_fn(p, example=None) for p in ("paraphrase", "0")] == [1, -1]


def test_factorised_prompt_tasks_start_with_language_then_task_sentinel(fake_tfds):
  size = vocab.get_mt5_vocabulary().vocab_size
  fr = examples("mt5_lang_task_index_xnli_dev_test.fr")
  assert fr[0]["inputs_pretokenized"].decode() == "premise: P1 fr. hypothesis: H1 fr."
  lang, task = multilingual.LANG_INDEX["fr"], multilingual.TASK_INDEX["xnli"]
  assert fr[0]["inputs"][:2].tolist() == [size - 1 - lang, size - 1 - task]
  assert fr[0]["inputs"][2:-1].tolist() == vocab.get_mt5_vocabulary().encode("premise: P1 fr. hypothesis: H1 fr.")
  train = examples("mt5_lang_task_index_xnli_train", "train")
  assert train[0]["inputs"][0] == size - 1 - multilingual.LANG_INDEX["en"]
  lm = examples("mt5_lang_task_index_mc4_span_corruption.fr", "train")[0]
  assert lm["inputs"][:2].tolist() == [size - 1 - lang, size - 1 - multilingual.TASK_INDEX["mc4"]]
  assert size - 1 in lm["targets"].tolist()  # the first noise span's sentinel
  mixture = seqio.get_mixture_or_task("mt5_lang_task_index_xnli_zeroshot")
  rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
  assert rates["mt5_lang_task_index_xnli_train"] == len(XNLI)  # half of the training examples
  assert sum(r for n, r in rates.items() if "mc4" in n) == len(XNLI)
  assert {n for n in rates if "dev_test" in n} == {f"mt5_lang_task_index_xnli_dev_test.{l}" for l in XNLI}


def test_show_tasks_cli_prints_a_language(fake_tfds, capsys):
  from prompt_tuning.scripts import show_tasks  # pylint: disable=g-import-not-at-top
  assert show_tasks.main(["--list", "--filter", "pawsx_zeroshot"]) == 0
  assert "mixture\tmt5_taskless_pawsx_zeroshot" in capsys.readouterr().out.splitlines()
  assert show_tasks.main(["--task", "mt5_taskless_xnli_dev_test.de", "--num", "1"]) == 0
  out = capsys.readouterr().out
  assert "  inputs_pretokenized: premise: P1 de. hypothesis: H1 de." in out
  assert "  targets_pretokenized: 2" in out
