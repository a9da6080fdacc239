"""Metrics, postprocessors, registry helpers and vocabularies of prompt_tuning.data (hand-computed cases)."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import tensorflow as tf

from prompt_tuning.data import metrics
from prompt_tuning.data import postprocessors
from prompt_tuning.data import utils
from prompt_tuning.data import vocab

MRPC = ("not_equivalent", "equivalent")


# ========== Classification ==========
def test_string_label_to_class_id_maps_outside_labels_to_minus_one():
  to_id = functools.partial(postprocessors.string_label_to_class_id, label_classes=MRPC)
  assert [to_id("not_equivalent"), to_id("equivalent"), to_id("Equivalent"), to_id("")] == [0, 1, -1, -1]


def test_accuracy_counts_invalid_prediction_as_wrong():
  assert metrics.accuracy([0, 1, 1, 0], [0, 1, -1, 1]) == {"accuracy": 50.0}
  with pytest.raises(ValueError, match="3 targets but 2 predictions"):
    metrics.accuracy([0, 1, 1], [0, 1])


def test_f1_with_invalid_sets_invalid_to_the_wrong_class():
  # -1 with target 1 becomes 0 (a false negative): tp=1, fp=1, fn=2 -> 2/(2+1+2).
  assert metrics.f1_score_with_invalid([1, 1, 0, 0, 1], [1, -1, 0, 1, 0])["f1"] == pytest.approx(40.0)
  # -1 with target 0 becomes 1, a false positive: tp=1, fp=1 -> 2/3.
  assert metrics.f1_score_with_invalid([0, 1], [-1, 1])["f1"] == pytest.approx(100 * 2 / 3)
  assert metrics.f1_score_with_invalid([0], [-1]) == {"f1": 0.0}


def test_mean_multiclass_f1_averages_per_class_f1():
  # class 0: F1 1; class 1: never predicted -> 0; class 2: tp=1, fp=1, fn=1 -> 0.5.
  result = metrics.mean_multiclass_f1(3)([0, 1, 2, 2], [0, 2, 2, -1])
  assert result == {"mean_3class_f1": pytest.approx(50.0)}


def test_matthews_corrcoef():
  # tp=1, tn=2, fp=0, fn=1: (1*2 - 0*1) / sqrt(1 * 2 * 2 * 3).
  assert metrics.matthews_corrcoef([1, 1, 0, 0], [1, 0, 0, 0])["matthews_corrcoef"] == pytest.approx(
      100 * 2 / np.sqrt(12))
  assert metrics.matthews_corrcoef([1, 0], [1, 1]) == {"matthews_corrcoef": 0.0}


def test_correlations_and_float_postprocessing():
  assert postprocessors.string_to_float("3.4") == 3.4
  assert postprocessors.string_to_float("high") == -1.0
  assert metrics.pearson_corrcoef([1, 2, 3, 4], [2, 4, 6, 8])["pearson_corrcoef"] == pytest.approx(100)
  assert metrics.spearman_corrcoef([1, 2, 3, 4], [1, 5, 9, 100])["spearman_corrcoef"] == pytest.approx(100)
  assert metrics.spearman_corrcoef([1, 2, 3], [3, 2, 1])["spearman_corrcoef"] == pytest.approx(-100)


# ========== MultiRC / ReCoRD / SQuAD ==========
def test_multirc_f1a_and_exact_match_per_question():
  targets = [postprocessors.multirc(label, example={"idx/question": q}, is_target=True)
             for label, q in (("True", 0), ("False", 0), ("True", 1))]
  assert targets == [{"value": 1, "group": 0}, {"value": 0, "group": 0}, {"value": 1, "group": 1}]
  predictions = [postprocessors.multirc(p) for p in ("True", "Maybe", "True")]
  assert predictions[1] == {"value": -1}
  # F1a: the invalid answer (target 0) becomes 1 -> tp=2, fp=1.
  assert metrics.multirc_f1_over_all_answers(targets, predictions)["f1"] == pytest.approx(80.0)
  # Question 0 has a wrong answer (0), question 1 is all right (100).
  assert metrics.mean_group_metric(metrics.all_match)(targets, predictions) == {"exact_match": 50.0}


def test_record_scores_each_passage_query_once_with_max_over_answers():
  def target(passage, query, answers):
    example = {"idx/passage": passage, "idx/query": query, "answers": [a.encode() for a in answers]}
    return postprocessors.record("ignored", example=example, is_target=True)

  targets = [target(0, 0, ["cat", "The cat"]), target(0, 0, ["cat", "The cat"]), target(0, 1, ["dog"])]
  assert targets[0] == {"value": ["cat", "The cat"], "group": (0, 0)}
  predictions = [postprocessors.record(p) for p in ("cats", "cat", "a dog!")]
  # Only the first copy of group (0, 0) counts: "cats" misses; "a dog!" -> "dog" hits.
  result = metrics.deduplicate_metric(metrics.squad)(targets, predictions)
  assert result == {"em": pytest.approx(50.0), "f1": pytest.approx(50.0)}


def test_squad_normalisation_and_scores():
  assert metrics.normalize_squad("The  Cat's, hat!") == "cats hat"
  assert metrics.normalize_squad("an apple a day") == "apple day"
  assert metrics.squad([["Denver Broncos", "Broncos"]], ["the Denver broncos."]) == {
      "em": 100.0, "f1": 100.0}
  # Overlap 2 of 3 tokens each way: P = R = 2/3.
  result = metrics.squad([["big red dog", "cat"]], ["red dog runs"])
  assert result["em"] == 0.0 and result["f1"] == pytest.approx(100 * 2 / 3)


def test_qa_postprocessor_returns_all_answers_for_targets():
  example = {"answers": np.array([b"Paris . ", b"in Paris"], dtype=object)}
  assert postprocessors.qa("x", example=example, is_target=True) == ["Paris . ", "in Paris"]
  assert postprocessors.qa("Paris", example=example) == "Paris"


# ========== WSC simple ==========
@pytest.mark.parametrize("prediction, expected", [
    ("Fuzzy bunny", 1),     # determiners and case are ignored
    ("the bunny", 1),       # the prediction is a subset of the referent
    ("a very fuzzy bunny", 1),  # the referent is a subset of the prediction
    ("the dog", 0),
    ("bunny's", 0),         # only one side is possessive
    ("  ", -1),             # empty prediction never matches a label
])
def test_wsc_simple(prediction, expected):
  example = {"targets_pretokenized": b"the fuzzy bunny", "label": 1}
  assert postprocessors.wsc_simple(prediction, example=example) == expected
  assert postprocessors.wsc_simple(prediction, example=example, is_target=True) == 1


# ========== Rank classification ==========
RANK_TARGETS = [((0, 0), True, 1.0, 2), ((0, 1), False, 1.0, 2),
                ((1, 0), False, 1.0, 2), ((1, 1), True, 1.0, 2),
                ((2, 0), True, 1.0, 2), ((2, 1), False, 1.0, 2)]
RANK_SCORES = [-1.0, -2.0, -1.0, -3.0, -5.0, -1.0]


def test_rank_classification_binary():
  # Picks label 0, 0, 1 -> only example 0 is right; the one positive (example 1,
  # P(label 1) = 0.12) ranks below both negatives (0.27 and 0.98).
  result = metrics.rank_classification(RANK_TARGETS, RANK_SCORES, num_classes=2)
  assert result == pytest.approx({"accuracy": 100 / 3, "f1": 0.0, "auc-roc": 0.0, "auc-pr": 100 / 3})
  order = [5, 2, 0, 3, 1, 4]  # the metric sorts by idx itself
  shuffled = metrics.rank_classification([RANK_TARGETS[i] for i in order],
                                         [RANK_SCORES[i] for i in order], num_classes=2)
  assert shuffled == pytest.approx(result)
  assert metrics.rank_classification(RANK_TARGETS, RANK_SCORES) == pytest.approx({"accuracy": 100 / 3})


def test_rank_classification_multiclass_and_multiple_answers():
  targets = [((i, j), j == gold, 1.0, 1) for i, gold in enumerate((0, 1, 2)) for j in range(3)]
  scores = [0, -1, -2, -1, 0, -2, 0, -1, -2]  # predicts 0, 1, 0
  result = metrics.rank_classification(targets, scores, num_classes=3)
  # class 0: tp=1, fp=1 -> 2/3; class 1: 1; class 2: 0.
  assert result == pytest.approx({"accuracy": 200 / 3, "mean_3class_f1": 100 * (2 / 3 + 1) / 3})
  both_correct = [((0, 0), True, 1.0, 1), ((0, 1), True, 1.0, 1)]
  assert metrics.rank_classification(both_correct, [-2, -1], num_classes=2) == {"accuracy": 100.0}
  with pytest.raises(ValueError, match="do not split into 2"):
    metrics.rank_classification(both_correct[:1], [-1], num_classes=2)


def test_rank_classification_postprocessor():
  example = {"idx": np.array([3, 1], np.int32), "is_correct": np.bool_(True),
             "targets": np.array([10, 1], np.int32)}
  assert postprocessors.rank_classification(0.5, example=example, is_target=True) == ((3, 1), True, 1.0, 2)
  assert postprocessors.rank_classification(-0.25, example=example) == -0.25


# ========== `_examples` wrappers ==========
def _sst2_prediction(text: str, inputs: bytes, target: bytes):
  to_id = functools.partial(postprocessors.string_label_to_class_id,
                            label_classes=("negative", "positive"))
  example = {"inputs_pretokenized": inputs, "targets_pretokenized": target}
  return postprocessors.postprocess_with_examples(to_id, text, example=example)


def test_postprocess_with_examples_wraps_predictions_only():
  prediction = _sst2_prediction("positive", b"great fun", b"positive")
  assert prediction == {"prediction": 1, "prediction_pretokenized": "positive",
                        "inputs_pretokenized": b"great fun", "targets_pretokenized": b"positive"}
  to_id = functools.partial(postprocessors.string_label_to_class_id, label_classes=MRPC)
  assert postprocessors.postprocess_with_examples(
      to_id, "equivalent", example={}, is_target=True) == 1
  # Chained: the text is read from the upstream dict, missing fields come from it too.
  chained = postprocessors.postprocess_with_examples(
      to_id, {"label": "equivalent", "inputs_pretokenized": "s1"},
      decoded_model_output_field="label", example_fields=("inputs_pretokenized", "other"))
  assert chained == {"prediction": 1, "prediction_pretokenized": "equivalent",
                     "inputs_pretokenized": "s1", "other": None}


def test_label_translation_between_qqp_and_mrpc():
  to_mrpc = postprocessors.sequential(
      postprocessors.qqp_to_mrpc,
      functools.partial(postprocessors.string_label_to_class_id, label_classes=MRPC))
  assert [to_mrpc("duplicate"), to_mrpc("not_duplicate"), to_mrpc("dup")] == [1, 0, -1]
  assert postprocessors.mrpc_to_qqp("not_equivalent") == "not_duplicate"


def test_metric_with_examples_and_text_summaries():
  predictions = [_sst2_prediction("positive", b"great fun", b"positive"),
                 _sst2_prediction("meh", b"dull plot", b"negative")]
  targets = [1, 0]
  assert metrics.metric_with_examples(metrics.accuracy, targets, predictions) == {"accuracy": 50.0}
  summaries = metrics.text_examples(targets, predictions, task_name="sst2")
  assert set(summaries) == {"sst2 samples", "sst2 negative samples"}
  assert "great fun" in summaries["sst2 samples"].textdata
  negative = summaries["sst2 negative samples"].textdata
  assert "example: dull plot" in negative and "prediction: meh" in negative
  assert "great fun" not in negative


def test_format_qa_lists_sorted_unique_answers():
  example = {"context": b"ctx", "question": b"q ?", "answers": [b"b", b"a", b"b"],
             "prediction_pretokenized": "a"}
  assert metrics.format_qa([0], [example]) == "context: ctx\nquestion: q ?\nanswers: a; b\nprediction: a"
  summaries = metrics.text_examples([["a", "b"]], [{"prediction": "a", **example}], task_name="drop",
                                    format_fn=metrics.format_qa)
  assert summaries["drop negative samples"].textdata == ""  # "a" is one of the answers


def test_safe_sample():
  assert list(metrics.safe_sample(-1, "abc")) == [0, 1, 2]
  assert list(metrics.safe_sample(9, "abc")) == [0, 1, 2]
  picked = metrics.safe_sample(2, "abcde", seed=3)
  assert len(set(picked)) == 2 and set(picked) <= set(range(5))
  assert picked == metrics.safe_sample(2, "abcde", seed=3)


# ========== Registry helpers and vocabularies ==========
def test_task_mapping_sorts_and_aliases():
  assert utils.task_mapping(("rte", "boolq", "axb", "cb"), {"axb": "rte"}) == {
      "boolq": 0, "cb": 1, "rte": 2, "axb": 2}
  with pytest.raises(ValueError, match="'wsc'"):
    utils.task_mapping(("rte",), {"wsc.fixed": "wsc"})


def test_default_vocabularies_are_the_public_models(monkeypatch):
  monkeypatch.delenv(vocab.T5_VOCAB_ENV, raising=False)
  monkeypatch.delenv(vocab.MT5_VOCAB_ENV, raising=False)
  vocab.set_vocab_path(None)
  t5 = vocab.get_t5_vocabulary()
  assert t5.sentencepiece_model_file == "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
  assert t5.extra_ids == 100
  mt5 = vocab.get_mt5_vocabulary()
  assert mt5.sentencepiece_model_file == "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"
  assert mt5.extra_ids == 0
  with pytest.raises(ValueError, match="byt5"):
    vocab.vocab_path("byt5")


def test_vocabulary_override_order_and_lazy_reload(monkeypatch, t5_vocab_path, tmp_path):
  monkeypatch.setenv(vocab.T5_VOCAB_ENV, str(tmp_path / "from_env.model"))
  assert vocab.vocab_path() == str(tmp_path / "from_env.model")
  try:
    vocab.set_vocab_path(t5_vocab_path)
    t5 = vocab.get_t5_vocabulary()
    assert t5.sentencepiece_model_file == str(t5_vocab_path)
    assert t5.vocab_size == 32100
    assert t5.encode("rte hypothesis:")[-1] == 10  # ":" in the T5 vocabulary
    vocab.set_vocab_path(tmp_path / "missing.model")
    with pytest.raises(tf.errors.NotFoundError):  # the new path is read on the next load
      _ = t5.vocab_size
  finally:
    vocab.set_vocab_path(None)
