"""SPoT source tasks: names, exact texts, splits and evaluation (TFDS mocked with hand-written examples)."""
from __future__ import annotations

import importlib
from typing import Any
from unittest import mock

import pytest
import seqio
import tensorflow_datasets as tfds

import prompt_tuning.data.tasks  # pylint: disable=unused-import
import tfds_fakes
from tfds_fakes import examples, texts
from prompt_tuning.data import metrics
from prompt_tuning.data import spot
from prompt_tuning.data import vocab

# (TFDS name without version, split) -> raw examples (keys must exist in the TFDS features).
TFDS_DATA: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("glue/rte", "validation"): [
        {"sentence1": "Ann sang.", "sentence2": "Ann slept.", "label": 1, "idx": 0}],
    ("glue/stsb", "validation"): [
        {"sentence1": "A man.", "sentence2": "A dog.", "label": 3.3, "idx": 1}],
    ("glue/mnli", "train"): [
        {"premise": "It rains.", "hypothesis": "It is wet.", "label": 0, "idx": 2}],
    ("glue/mnli", "validation_matched"): [
        {"premise": "It rains.", "hypothesis": "It is dry.", "label": 2, "idx": 3}],
    ("glue/mnli", "validation_mismatched"): [
        {"premise": "It rains.", "hypothesis": "I sing.", "label": 1, "idx": 4}],
    ("mrqa/squad", "validation"): [
        {"qid": "s1", "question": "Who's there?", "context": "Ann,  Bob.", "answers": ["Ann", "Bob."]}],
    ("mrqa/natural_questions", "train"): [
        {"qid": "n1", "question": "Who won?", "context": "Ann won.", "answers": ["Ann"]}],
    ("anli/r1", "validation"): [
        {"uid": "a1", "context": "A  cat sat.", "hypothesis": "An animal sat.", "label": 0}],
    ("anli/r2", "validation"): [
        {"uid": "a2", "context": "A cat sat.", "hypothesis": "It was hungry.", "label": 1}],
    ("anli/r3", "validation"): [
        {"uid": "a3", "context": "A cat sat.", "hypothesis": "It stood.", "label": 2}],
    ("doc_nli", "validation"): [
        {"premise": "Ann sang. Bob left.", "hypothesis": "Bob stayed.", "label": 0},
        {"premise": "Ann sang. Bob left.", "hypothesis": "Ann sang.", "label": 1}],
    ("snli", "test"): [{"premise": "A dog runs.", "hypothesis": "A pet moves.", "label": -1}],
    ("imdb_reviews/plain_text", "test"): [{"text": "A fine film.", "label": 1}],
    ("yelp_polarity_reviews", "test"): [{"text": "Cold food.", "label": 0}],
    ("sentiment140", "test"): [{"text": "so so day", "polarity": 2},
                               {"text": "great day", "polarity": 4}],
    ("aeslc", "validation"): [{"email_body": "Meet at 5.\n\nThanks", "subject_line": "Meeting"}],
    ("billsum", "test"): [{"text": "A bill to fund parks.", "summary": "Funds parks."}],
    ("gigaword", "validation"): [{"document": "stocks rose on monday .", "summary": "stocks rise"}],
    ("samsum", "validation"): [
        {"dialogue": "Ann: hi\r\nBob:  hello", "summary": "They greet.", "id": "d1"}],
    ("newsroom", "validation"): [{"text": "The mayor resigned.", "summary": "Mayor quits."}],
}

# task -> (split, [(inputs, targets)]); written by hand from the reference formats.
EXPECTED = {
    "spot_glue_rte_v200": ("validation", [
        ("rte sentence1: Ann sang. sentence2: Ann slept.", "not_entailment")]),
    # 3.3 * 5 = 16.5 rounds half to even -> 16 -> "3.2".
    "spot_glue_stsb_v200": ("validation", [("stsb sentence1: A man. sentence2: A dog.", "3.2")]),
    "spot_glue_mnli_train_v200": ("train", [
        ("mnli hypothesis: It is wet. premise: It rains.", "entailment")]),
    "spot_glue_mnli_validation_matched_v200": ("validation", [
        ("mnli hypothesis: It is dry. premise: It rains.", "contradiction")]),
    "spot_glue_mnli_validation_mismatched_v200": ("validation", [
        ("mnli hypothesis: I sing. premise: It rains.", "neutral")]),
    # The task name comes first; punctuation is padded, whitespace collapsed.
    "spot_mrqa_squad_v100": ("validation", [
        ("squad question: Who ' s there ? context: Ann , Bob . ", "Ann")]),
    "spot_mrqa_natural_questions_v100": ("train", [
        ("natural_questions question: Who won ? context: Ann won . ", "Ann")]),
    "spot_anli_r1_v010": ("validation", [
        ("anli_r1 hypothesis: An animal sat. context: A cat sat.", "entailment")]),
    "spot_anli_r2_v010": ("validation", [
        ("anli_r2 hypothesis: It was hungry. context: A cat sat.", "neutral")]),
    "spot_anli_r3_v010": ("validation", [
        ("anli_r3 hypothesis: It stood. context: A cat sat.", "contradiction")]),
    "spot_doc_nli_v100": ("validation", [
        ("doc_nli hypothesis: Bob stayed. premise: Ann sang. Bob left.", "not_entailment"),
        ("doc_nli hypothesis: Ann sang. premise: Ann sang. Bob left.", "entailment")]),
    "spot_snli_v110": ("test", [("snli hypothesis: A pet moves. premise: A dog runs.", "<unk>")]),
    "spot_imdb_reviews_v100": ("test", [("imdb_reviews text: A fine film.", "positive")]),
    "spot_yelp_polarity_reviews_v020": ("test", [
        ("yelp_polarity_reviews text: Cold food.", "negative")]),
    "spot_sentiment140_v100": ("test", [("sentiment140 text: so so day", "neutral"),
                                        ("sentiment140 text: great day", "positive")]),
    # Summaries join the source as is (newlines and double spaces kept).
    "spot_aeslc_v100": ("validation", [("aeslc summarize: Meet at 5.\n\nThanks", "Meeting")]),
    "spot_billsum_v300": ("test", [("billsum summarize: A bill to fund parks.", "Funds parks.")]),
    "spot_gigaword_v120": ("validation", [
        ("gigaword summarize: stocks rose on monday .", "stocks rise")]),
    "spot_samsum_v100": ("validation", [
        ("samsum summarize: Ann: hi\r\nBob:  hello", "They greet.")]),
    "spot_newsroom_v100": ("validation", [
        ("newsroom summarize: The mayor resigned.", "Mayor quits.")]),
}

TFDS_NAMES = {
    "spot_glue_rte_v200": "glue/rte:2.0.0",
    "spot_mrqa_trivia_qa_v100": "mrqa/trivia_qa:1.0.0",
    "spot_anli_r2_v010": "anli/r2:0.1.0",
    "spot_doc_nli_v100": "doc_nli:1.0.0",
    "spot_snli_v110": "snli:1.1.0",
    "spot_sentiment140_v100": "sentiment140:1.0.0",
    "spot_cnn_dailymail_v320": "cnn_dailymail:3.2.0",
    "spot_multi_news_v100": "multi_news:1.0.0",
    "spot_newsroom_v100": "newsroom:1.0.0",
}


@pytest.fixture(scope="module")
def fake_tfds(t5_vocab_path):
  with tfds_fakes.serving(tfds_fakes.FakeTfds(TFDS_DATA, exact_keys=False), t5_vocab_path) as fake:
    yield fake


def test_registered_names():
  glue_names = {f"spot_glue_{n}_v200" for n in
                ("cola", "sst2", "mrpc", "qqp", "stsb", "qnli", "rte", "wnli",
                 "mnli_train", "mnli_validation_matched", "mnli_validation_mismatched")}
  mrqa = {f"spot_mrqa_{n}_v100" for n in
          ("squad", "news_qa", "trivia_qa", "search_qa", "hotpot_qa", "natural_questions")}
  nli = {"spot_anli_r1_v010", "spot_anli_r2_v010", "spot_anli_r3_v010", "spot_doc_nli_v100",
         "spot_snli_v110"}
  sentiment = {"spot_imdb_reviews_v100", "spot_sentiment140_v100", "spot_yelp_polarity_reviews_v020"}
  summaries = {"spot_aeslc_v100", "spot_billsum_v300", "spot_gigaword_v120", "spot_cnn_dailymail_v320",
               "spot_multi_news_v100", "spot_samsum_v100", "spot_newsroom_v100"}
  expected = glue_names | mrqa | nli | sentiment | summaries
  assert set(spot.TASK_NAMES) == expected and len(spot.TASK_NAMES) == 32
  registered = set(seqio.TaskRegistry.names())
  assert expected <= registered
  # Only the T5-format tasks: no ax, no plain MNLI task, no variants.
  assert not {"spot_glue_ax_v200", "spot_glue_mnli_v200", "spot_glue_mnli_matched_v200"} & registered
  assert not any(n.startswith(("taskless_spot", "task_index_spot", "mt5_spot")) for n in registered)
  mixture = seqio.get_mixture_or_task("spot_glue_mnli_and_dev_v200")
  assert {t.name for t in mixture.tasks} == {
      "spot_glue_mnli_train_v200", "spot_glue_mnli_validation_matched_v200",
      "spot_glue_mnli_validation_mismatched_v200"}
  assert {mixture.get_rate(t) for t in mixture.tasks} == {1.0}


def test_tfds_names_and_splits():
  for name, tfds_name in TFDS_NAMES.items():
    assert seqio.get_mixture_or_task(name).source.tfds_dataset.name == tfds_name
  assert seqio.get_mixture_or_task("spot_glue_mnli_train_v200").splits == ("train",)
  assert seqio.get_mixture_or_task("spot_glue_mnli_validation_matched_v200").splits == ("validation",)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_texts(fake_tfds, name):
  split, expected = EXPECTED[name]
  assert texts(name, split) == expected


def test_reads_the_pinned_tfds_versions_and_splits(fake_tfds):
  for name in ("spot_glue_mnli_validation_mismatched_v200", "spot_mrqa_squad_v100",
               "spot_anli_r1_v010", "spot_sentiment140_v100"):
    split, _ = EXPECTED[name]
    texts(name, split)
  assert {("glue/mnli", "2.0.0", "validation_mismatched"), ("mrqa/squad", "1.0.0", "validation"),
          ("anli/r1", "0.1.0", "validation"), ("sentiment140", "1.0.0", "test")} <= set(fake_tfds.reads)


@pytest.mark.parametrize("name,rows,expected", [
    ("spot_cnn_dailymail_v320", [{"article": "Rain fell.", "highlights": "Rain."}],
     [("cnn_dailymail summarize: Rain fell.", "Rain.")]),
    ("spot_multi_news_v100", [{"document": "A ||||| B", "summary": "AB"}],
     [("multi_news summarize: A ||||| B", "AB")]),
])
def test_summaries_pinned_to_versions_tfds_cannot_build(fake_tfds, name, rows, expected):
  # TFDS 4.9 builds these only at newer versions, so run the pipeline on in-memory rows.
  assert texts(tfds_fakes.clone_on_rows(name, rows)) == expected


def test_glue_and_mrqa_postprocessing_and_metrics(fake_tfds):
  rte = seqio.get_mixture_or_task("spot_glue_rte_v200")
  assert [rte.postprocess_fn(p, example={}, is_target=False)
          for p in ("entailment", "not_entailment", "maybe")] == [0, 1, -1]
  assert rte.metric_fns[0]([1, 1], [1, -1]) == {"accuracy": 50.0}
  stsb = seqio.get_mixture_or_task("spot_glue_stsb_v200")
  assert stsb.postprocess_fn("3.2", example={}) == 3.2
  assert [fn.__name__ for fn in stsb.metric_fns] == ["pearson_corrcoef", "spearman_corrcoef"]
  cola = seqio.get_mixture_or_task("spot_glue_cola_v200")
  assert [fn.__name__ for fn in cola.metric_fns] == ["matthews_corrcoef"]

  squad = seqio.get_mixture_or_task("spot_mrqa_squad_v100")
  (ex,) = examples("spot_mrqa_squad_v100")
  target = squad.postprocess_fn(ex["targets_pretokenized"].decode(), example=ex, is_target=True)
  assert target == ["Ann", "Bob . "]
  prediction = squad.postprocess_fn("bob", example=ex, is_target=False)
  assert squad.metric_fns == [metrics.squad]
  assert metrics.squad([target], [prediction]) == {"em": 100.0, "f1": 100.0}


def test_nli_accuracy_through_seqio_evaluator(fake_tfds):
  t5_vocab = vocab.get_t5_vocabulary()
  task = seqio.get_mixture_or_task("spot_doc_nli_v100")
  assert task.postprocess_fn("entailment") == "entailment"  # none: accuracy on the label text
  # seqio.Evaluator needs the split names, which a TFDS source only knows with real data.
  name = tfds_fakes.clone_on_rows("spot_doc_nli_v100", TFDS_DATA[("doc_nli", "validation")])
  evaluator = seqio.Evaluator(name, feature_converter=seqio.EncDecFeatureConverter(pack=False))

  def predict_fn(dataset):  # always "entailment", padded like a model's decodes
    return [(i, (t5_vocab.encode("entailment") + [1] + [0] * 8)[:8])
            for i, _ in dataset.as_numpy_iterator()]

  results, _ = evaluator.evaluate(compute_metrics=True, predict_fn=predict_fn)
  assert results.result()[name] == {"accuracy": 50.0}


def test_summarization_is_scored_with_t5_rouge():
  for name in ("spot_samsum_v100", "spot_cnn_dailymail_v320"):
    task = seqio.get_mixture_or_task(name)
    assert task.metric_fns == [metrics.rouge] and task.postprocess_fn("A summary.") == "A summary."
  scores = metrics.rouge(["the cat sat"], ["the cat ran"])  # unigrams 2/3, bigrams 1/2, LCS 2/3
  assert scores == pytest.approx({"rouge1": 200 / 3, "rouge2": 50.0, "rougeLsum": 200 / 3})
  # " . " ends a sentence for rougeLsum: two swapped sentences match fully, though their LCS is half.
  assert metrics.rouge(["a b . c d"], ["c d . a b"])["rougeLsum"] == pytest.approx(100.0)
  assert metrics.rouge(["a b"], ["x y"]) == {"rouge1": 0.0, "rouge2": 0.0, "rougeLsum": 0.0}


def test_registration_is_idempotent_and_reads_no_data():
  before = set(seqio.TaskRegistry.names()), set(seqio.MixtureRegistry.names())
  old = seqio.TaskRegistry.get("spot_snli_v110")
  no_data = AssertionError("registration must not touch TFDS")
  with mock.patch.object(tfds, "builder", side_effect=no_data), \
      mock.patch.object(tfds, "load", side_effect=no_data):
    importlib.reload(spot)
  assert (set(seqio.TaskRegistry.names()), set(seqio.MixtureRegistry.names())) == before
  assert seqio.TaskRegistry.get("spot_snli_v110") is not old
