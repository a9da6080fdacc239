"""Registered SeqIO tasks produce T5's exact text formats (TFDS mocked with hand-written examples)."""
from __future__ import annotations

import gzip
import importlib
import json
from typing import Any
from unittest import mock

import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

import prompt_tuning.data.tasks  # pylint: disable=unused-import
import tfds_fakes
from tfds_fakes import examples, texts
from prompt_tuning.data import glue
from prompt_tuning.data import glue_transfer
from prompt_tuning.data import qa
from prompt_tuning.data import super_glue
from prompt_tuning.data import vocab
from prompt_tuning.scripts import mrqa_to_tsv
from prompt_tuning.scripts import show_tasks

T5_VOCAB_SIZE = 32100  # 32,000 pieces + 100 extra ids; <extra_id_i> = 32099 - i

# (tfds dataset/config, split, raw example, [(inputs, targets), ...], task index).
# The expected strings are written by hand from T5's formats.
GLUE_CASES = {
    "cola": ("validation", {"sentence": "The book was read.", "label": 1, "idx": 0},
             [("cola sentence: The book was read.", "acceptable")], 0),
    "sst2": ("validation", {"sentence": "a gorgeous film", "label": 0, "idx": 1},
             [("sst2 sentence: a gorgeous film", "negative")], 6),
    "mrpc": ("validation", {"sentence1": "He left.", "sentence2": "He went away.", "label": 1, "idx": 2},
             [("mrpc sentence1: He left. sentence2: He went away.", "equivalent")], 2),
    "qqp": ("validation", {"question1": "Why is it?", "question2": "How is it?", "label": 0, "idx": 3},
            [("qqp question1: Why is it? question2: How is it?", "not_duplicate")], 4),
    # 2.5 * 5 = 12.5 rounds half to even -> 12 -> "2.4".
    "stsb": ("validation", {"sentence1": "A man.", "sentence2": "A dog.", "label": 2.5, "idx": 4},
             [("stsb sentence1: A man. sentence2: A dog.", "2.4")], 7),
    "mnli": ("validation_matched",
             {"premise": "It rains.", "hypothesis": "It is dry.", "label": 2, "idx": 5},
             [("mnli hypothesis: It is dry. premise: It rains.", "contradiction")], 1),
    "mnli_matched": ("validation", {"premise": "It rains.", "hypothesis": "It is wet.", "label": 0, "idx": 6},
                     [("mnli hypothesis: It is wet. premise: It rains.", "entailment")], 1),
    "mnli_mismatched": ("validation", {"premise": "It rains.", "hypothesis": "I sing.", "label": 1, "idx": 7},
                        [("mnli hypothesis: I sing. premise: It rains.", "neutral")], 1),
    "qnli": ("validation", {"question": "Who sang?", "sentence": "Ann sang.", "label": 0, "idx": 8},
             [("qnli question: Who sang? sentence: Ann sang.", "entailment")], 3),
    "rte": ("validation", {"sentence1": "Ann sang.", "sentence2": "Ann slept.", "label": 1, "idx": 9},
            [("rte sentence1: Ann sang. sentence2: Ann slept.", "not_entailment")], 5),
    "wnli": ("validation", {"sentence1": "It fell.", "sentence2": "The cup fell.", "label": 1, "idx": 10},
             [("wnli sentence1: It fell. sentence2: The cup fell.", "entailment")], 8),
    "ax": ("test", {"premise": "P here.", "hypothesis": "H here.", "label": -1, "idx": 11},
           [("mnli hypothesis: H here. premise: P here.", "<unk>")], 1),
}

WSC_TEXT = "Mark told Pete many lies about himself , which Pete included in his book ."
WSC_FIXED_TEXT = ("The boy continued to whip the pony , and eventually the pony threw him over. "
                  "John laughed out quite loud. \"Good for him,\" he said. ")
SUPER_GLUE_CASES = {
    "boolq": ("validation",
              {"question": "is the sky blue", "passage": "The sky is blue.", "idx": 0, "label": 1},
              [("boolq passage: The sky is blue. question: is the sky blue", "True")], 0),
    "cb": ("validation", {"premise": "It may rain.", "hypothesis": "It rains.", "idx": 1, "label": 2},
           [("cb hypothesis: It rains. premise: It may rain.", "neutral")], 1),
    "copa": ("validation",
             {"premise": "The man broke his toe.", "choice1": "He dropped a hammer.",
              "choice2": "He got a hole.", "question": "cause", "idx": 2, "label": 0},
             [("copa choice1: He dropped a hammer. choice2: He got a hole. "
               "premise: The man broke his toe. question: cause", "choice1")], 2),
    "multirc": ("validation",
                {"paragraph": "<b>Sent 1: </b>Ann waved.<br><b>Sent 2: </b>Bob left.",
                 "question": "Who waved?", "answer": "Ann.", "label": 0,
                 "idx": {"paragraph": 3, "question": 4, "answer": 5}},
                [("multirc question: Who waved? answer: Ann. paragraph: Sent 1: Ann waved. "
                  "Sent 2: Bob left.", "False")], 3),
    "record": ("validation",
               {"passage": "The cat sat.\n@highlight\nCats purr\n@highlight\nDogs bark",
                "query": "@placeholder purrs", "entities": ["cat", "Dogs"],
                "answers": ["cat", "The cat"], "idx": {"passage": 6, "query": 7}},
               [("record query: @placeholder purrs entities: cat, Dogs passage: "
                 "The cat sat. Cats purr. Dogs bark", "cat"),
                ("record query: @placeholder purrs entities: cat, Dogs passage: "
                 "The cat sat. Cats purr. Dogs bark", "The cat")], 4),
    "rte": ("validation", {"premise": "Ann sang.", "hypothesis": "Ann made a sound.", "idx": 8, "label": 0},
            [("rte hypothesis: Ann made a sound. premise: Ann sang.", "entailment")], 5),
    "wic": ("validation",
            {"word": "bank", "sentence1": "He sat by the bank.", "sentence2": "The bank lent money.",
             "start1": 14, "end1": 18, "start2": 4, "end2": 8, "idx": 9, "label": 0},
            [("wic sentence1: He sat by the bank. sentence2: The bank lent money. word: bank",
              "False")], 6),
    "axb": ("test", {"sentence1": "S one.", "sentence2": "S two.", "idx": 10, "label": -1},
            [("rte hypothesis: S two. premise: S one.", "<unk>")], 5),
    "axg": ("test", {"premise": "P one.", "hypothesis": "H one.", "idx": 11, "label": -1},
            [("rte hypothesis: H one. premise: P one.", "<unk>")], 5),
}

TFDS_DATA = {
    **{(f"glue/{name}", split): [example] for name, (split, example, _, _) in GLUE_CASES.items()},
    **{(f"super_glue/{name}", split): [example]
       for name, (split, example, _, _) in SUPER_GLUE_CASES.items()},
    ("super_glue/record", "test"): [{"passage": "A.\n@highlight\nB", "query": "@placeholder",
                                     "entities": ["A"], "answers": [],
                                     "idx": {"passage": 0, "query": 1}}],
    ("super_glue/wsc.fixed", "train"): [
        {"text": WSC_TEXT, "span1_index": 0, "span1_text": "Mark", "span2_index": 12,
         "span2_text": "his", "idx": 0, "label": 1},
        {"text": WSC_TEXT, "span1_index": 2, "span1_text": "Pete", "span2_index": 12,
         "span2_text": "his", "idx": 1, "label": 0}],
    ("super_glue/wsc.fixed", "validation"): [
        {"text": WSC_TEXT, "span1_index": 2, "span1_text": "Pete", "span2_index": 12,
         "span2_text": "his", "idx": 0, "label": 0},
        {"text": WSC_FIXED_TEXT, "span1_index": 0, "span1_text": "The boy", "span2_index": 13,
         "span2_text": "him", "idx": 1, "label": 1}],
    ("definite_pronoun_resolution", "test"): [
        {"sentence": "Bob asked Tom if he can lend some money.", "pronoun": "he",
         "candidates": ["Bob", "Tom"], "label": 1}],
    ("squad/v1.1", "validation"): [
        {"id": "q1", "title": "T", "context": "It was 1999, in Paris.", "question": "Where's it?",
         "answers": {"text": ["Paris.", "in Paris"], "answer_start": [16, 13]}}],
    ("mrqa/drop", "test"): [
        {"qid": "d1", "question": "How many?", "context": "Two, (2).", "answers": ["2", "two"]}],
    ("mrqa/news_qa", "validation"): [
        {"qid": "n1", "question": "Who won?", "context": "Ann won.", "answers": ["Ann"]}],
}


@pytest.fixture(scope="module")
def fake_tfds(t5_vocab_path):
  with tfds_fakes.serving(tfds_fakes.FakeTfds(TFDS_DATA, partial_builders=("mrqa",)), t5_vocab_path) as fake:
    yield fake


def check_variants(base: str, split: str, expected: list[tuple[str, str]], index: int) -> None:
  """T5 text as expected; taskless drops the first word; task_index adds one sentinel."""
  assert texts(base, split) == expected
  taskless = examples(f"taskless_{base}", split)
  assert [(ex["inputs_pretokenized"].decode(), ex["targets_pretokenized"].decode())
          for ex in taskless] == [(i.split(" ", 1)[1], t) for i, t in expected]
  indexed = examples(f"task_index_{base}", split)
  for plain, with_index in zip(taskless, indexed):
    assert with_index["inputs"][0] == T5_VOCAB_SIZE - 1 - index
    np.testing.assert_array_equal(with_index["inputs"][1:], plain["inputs"])
    np.testing.assert_array_equal(with_index["targets"], plain["targets"])


@pytest.mark.parametrize("name", list(GLUE_CASES))
def test_glue_formats(fake_tfds, name):
  split, _, expected, index = GLUE_CASES[name]
  check_variants(f"glue_{name}_v002", split, expected, index)
  assert (f"glue/{name}", "1.0.0", split) in fake_tfds.reads


def test_glue_v200_reads_tfds_2_0_0(fake_tfds):
  assert texts("taskless_glue_sst2_v200_examples") == [("sentence: a gorgeous film", "negative")]
  assert ("glue/sst2", "2.0.0", "validation") in fake_tfds.reads


@pytest.mark.parametrize("name", list(SUPER_GLUE_CASES))
def test_super_glue_formats(fake_tfds, name):
  split, _, expected, index = SUPER_GLUE_CASES[name]
  check_variants(f"super_glue_{name}_v102", split, expected, index)
  assert (f"super_glue/{name}", "1.0.2", split) in fake_tfds.reads


def test_super_glue_keeps_eval_fields(fake_tfds):
  (multirc,) = examples("super_glue_multirc_v102")
  assert (multirc["idx/paragraph"], multirc["idx/question"], multirc["idx/answer"]) == (3, 4, 5)
  record = examples("super_glue_record_v102")
  assert [list(ex["answers"]) for ex in record] == [[b"cat", b"The cat"]] * 2
  assert [(ex["idx/passage"], ex["idx/query"]) for ex in record] == [(6, 7)] * 2
  # Unlabeled ReCoRD examples become a single "<unk>" example.
  assert texts("super_glue_record_v102", "test") == [
      ("record query: @placeholder entities: A passage: A. B", "<unk>")]


def test_wsc_simple_train_and_eval(fake_tfds):
  marked = "wsc: Mark told Pete many lies about himself , which Pete included in *his* book ."
  # Training keeps only correct referents.
  assert texts("super_glue_wsc_v102_simple_train", "train") == [(marked, "Mark")]
  assert texts("taskless_super_glue_wsc_v102_simple_train", "train") == [(marked[5:], "Mark")]
  evaluation = examples("super_glue_wsc_v102_simple_eval")
  assert [(ex["inputs_pretokenized"].decode(), ex["targets_pretokenized"].decode(), ex["label"])
          for ex in evaluation] == [
              (marked, "Pete", 0),
              ("wsc: The boy continued to whip the pony , and eventually the pony threw him over. "
               "John laughed out quite loud. \"Good for *him* ,\" he said.", "The boy", 1)]
  (indexed, _) = examples("task_index_super_glue_wsc_v102_simple_eval")
  assert indexed["inputs"][0] == T5_VOCAB_SIZE - 1 - 7
  assert ("super_glue/wsc.fixed", "1.0.2", "train") in fake_tfds.reads


def test_dpr_simple(fake_tfds):
  assert texts("dpr_v001_simple", "test") == [
      ("wsc: Bob asked Tom if *he* can lend some money.", "Tom")]
  assert texts("taskless_dpr_v001_simple_examples", "test") == [
      ("Bob asked Tom if *he* can lend some money.", "Tom")]
  (indexed,) = examples("task_index_dpr_v001_simple", "test")
  assert indexed["inputs"][0] == T5_VOCAB_SIZE - 1 - 7  # WSC's index


def test_squad_pads_punctuation_and_keeps_all_answers(fake_tfds):
  (ex,) = examples("squad_v010_allanswers_examples")
  assert ex["inputs_pretokenized"] == b"question: Where ' s it ? context: It was 1999 , in Paris . "
  assert ex["targets_pretokenized"] == b"Paris . "
  assert list(ex["answers"]) == [b"Paris . ", b"in Paris"]
  assert (ex["question"], ex["context"], ex["id"]) == (b"Where ' s it ? ", b"It was 1999 , in Paris . ", b"q1")
  assert ("squad/v1.1", "3.0.0", "validation") in fake_tfds.reads


def test_mrqa_out_of_domain_validation_reads_tfds_test(fake_tfds):
  (ex,) = examples("mrqa_drop_v100_examples")
  assert (ex["inputs_pretokenized"], ex["targets_pretokenized"], ex["idx"]) == (
      b"question: How many ? context: Two , ( 2 ) . ", b"2", b"d1")
  assert list(ex["answers"]) == [b"2", b"two"]
  assert ("mrqa/drop", "1.0.0", "test") in fake_tfds.reads
  assert texts("mrqa_news_qa_v100_examples") == [("question: Who won ? context: Ann won . ", "Ann")]
  assert ("mrqa/news_qa", "1.0.0", "validation") in fake_tfds.reads


def test_mrqa_tsv_task_from_converted_jsonl(fake_tfds, tmp_path):
  source = tmp_path / "DROP.jsonl.gz"
  with gzip.open(source, "wt") as f:
    f.write(json.dumps({"header": {"dataset": "DROP"}}) + "\n")
    f.write(json.dumps({"context": "Two\tcats, (2).", "qas": [
        {"qid": "t1", "question": "How many?", "answers": ["2", "two cats"]}]}) + "\n")
  tsv = tmp_path / "DROP.tsv"
  assert mrqa_to_tsv.main(["--input", str(source), "--output", str(tsv)]) == 0
  assert tsv.read_text().splitlines()[1] == "t1\tTwo cats, (2).\tHow many?\t2\t2|||two cats"
  first = tsv.read_text()
  tsv.unlink()
  assert mrqa_to_tsv.main(["--jsonl", str(source)]) == 0  # the reference's flag; output named after the input
  assert tsv.read_text() == first
  names = qa.register_mrqa_tsv_task("mrqa_drop_tsv", {"validation": str(tsv)})
  assert names == ["mrqa_drop_tsv", "mrqa_drop_tsv_examples", "mt5_mrqa_drop_tsv",
                   "mt5_mrqa_drop_tsv_examples"]
  (ex,) = examples("mrqa_drop_tsv_examples")
  assert ex["inputs_pretokenized"] == b"question: How many ? context: Two cats , ( 2 ) . "
  assert ex["targets_pretokenized"] == b"2"
  assert list(ex["answers"]) == [b"2", b"two cats"]
  with pytest.raises(ValueError, match="at least one split"):
    qa.register_mrqa_tsv_task("mrqa_empty_tsv", {})


def test_zero_shot_transfer_translates_labels(fake_tfds):
  assert texts("taskless_glue_mrpc_from_qqp_v002") == [
      ("sentence1: He left. sentence2: He went away.", "equivalent")]
  example = {"inputs_pretokenized": b"x", "targets_pretokenized": b"equivalent"}
  for suffix in ("", "_examples"):
    task = seqio.get_mixture_or_task(f"glue_mrpc_from_qqp_v002{suffix}")
    predicted = [task.postprocess_fn(text, example=example, is_target=False)
                 for text in ("duplicate", "not_duplicate", "yes")]
    if suffix:
      predicted = [p["prediction"] for p in predicted]
    assert predicted == [1, 0, -1]  # plain tasks return ids too (reference bug not copied)
    assert task.postprocess_fn("equivalent", example=example, is_target=True) == 1
  to_qqp = seqio.get_mixture_or_task("glue_qqp_from_mrpc_v002")
  assert to_qqp.postprocess_fn("not_equivalent", example=example) == 0
  mixture = seqio.get_mixture_or_task("taskless_glue_mrpc_from_qqp_zeroshot_v002_examples")
  assert {t.name for t in mixture.tasks} == {
      "taskless_glue_qqp_v002", "taskless_glue_mrpc_from_qqp_v002_examples"}


def test_rank_classification_expands_every_label(fake_tfds):
  expanded = examples("taskless_super_glue_cb_v102_rank_classification")
  assert [(ex["targets_pretokenized"], bool(ex["is_correct"]), tuple(ex["idx"])) for ex in expanded] == [
      (b"entailment", False, (0, 0)), (b"contradiction", False, (0, 1)), (b"neutral", True, (0, 2))]
  assert {ex["inputs_pretokenized"] for ex in expanded} == {b"hypothesis: It rains. premise: It may rain."}
  assert len(examples("glue_qnli_v200_rank_classification")) == 2


def _evaluate(name: str, **model_fns) -> dict[str, Any]:
  evaluator = seqio.Evaluator(name, feature_converter=seqio.EncDecFeatureConverter(pack=False))
  metrics_future, _ = evaluator.evaluate(compute_metrics=True, **model_fns)
  return metrics_future.result()[name]


def test_rank_classification_is_scored_by_seqio_evaluator(fake_tfds):
  t5_vocab = vocab.get_t5_vocabulary()
  rows = [{"premise": f"P{i}.", "hypothesis": f"H{i}.", "idx": i, "label": label}
          for i, label in enumerate((0, 2, 0))]
  name = tfds_fakes.clone_on_rows("taskless_super_glue_cb_v102_rank_classification", rows)
  preference = {"entailment": -1.0, "contradiction": -3.0, "neutral": -2.0}

  def score_fn(dataset):
    return [(i, preference[t5_vocab.decode(ex["decoder_target_tokens"].tolist())])
            for i, ex in dataset.as_numpy_iterator()]

  result = _evaluate(name, score_fn=score_fn)
  # Always "entailment": right for examples 0 and 2; F1 entailment 0.8, others 0.
  assert result == pytest.approx({"accuracy": 200 / 3, "mean_3class_f1": 80 / 3})


def test_examples_task_reports_metrics_and_text_samples(fake_tfds):
  t5_vocab = vocab.get_t5_vocabulary()
  rows = [{"premise": f"P{i}.", "hypothesis": f"H{i}.", "idx": i, "label": label}
          for i, label in enumerate((0, 1, 0))]
  name = tfds_fakes.clone_on_rows("taskless_super_glue_rte_v102_examples", rows)
  outputs = ["entailment", "not_entailment", "maybe"]

  def predict_fn(dataset):  # padded like a model's decodes: tokens, EOS, zeros
    return [(i, (t5_vocab.encode(outputs[i]) + [1] + [0] * 8)[:8])
            for i, _ in dataset.as_numpy_iterator()]

  result = _evaluate(name, predict_fn=predict_fn)
  assert result["accuracy"] == pytest.approx(200 / 3)  # "maybe" is not a label -> wrong
  negative = result["rte negative samples"].textdata
  assert "prediction: maybe" in negative and "example: hypothesis: H2. premise: P2." in negative
  assert "H0." not in negative
  assert result["rte samples"].textdata.count("example: ") == 3


def test_mixtures(fake_tfds):
  def members(name):
    return {t.name for t in seqio.get_mixture_or_task(name).tasks}

  assert members("taskless_glue_mnli_and_dev_v002_examples") == {
      "taskless_glue_mnli_v002_examples", "taskless_glue_mnli_mismatched_v002_examples",
      "taskless_glue_mnli_matched_v002_examples"}
  assert members("taskless_super_glue_wsc_and_dev_v102_simple_examples") == {
      "taskless_super_glue_wsc_v102_simple_train_examples",
      "taskless_super_glue_wsc_v102_simple_eval_examples"}
  assert members("squad_to_drop_examples") == {"squad_v010_allanswers_examples",
                                               "mrqa_drop_v100_examples"}
  assert members("squad_to_mrqa_examples") == {"squad_v010_allanswers_examples"} | {
      f"mrqa_{n}_v100_examples" for n in
      ("bio_asq", "drop", "duo_rc", "race", "relation_extraction", "textbook_qa")}
  proportional = seqio.get_mixture_or_task("task_index_super_glue_with_dpr_v102_examples_proportional")
  rates = {t.name: proportional.get_rate(t) for t in proportional.tasks}
  assert rates["task_index_super_glue_record_v102_examples"] == 138_854
  assert rates["task_index_dpr_v001_simple_examples"] == 1_322
  assert rates["task_index_super_glue_wsc_v102_simple_eval_examples"] == 0


def test_every_documented_name_is_registered():
  tasks, mixtures = set(seqio.TaskRegistry.names()), set(seqio.MixtureRegistry.names())
  expected = set()
  for model in ("", "mt5_"):
    for variant in ("", "taskless_", "task_index_"):
      for suffix in ("", "_examples"):
        expected |= {f"{model}{variant}glue_{n}_{v}{suffix}" for n in GLUE_CASES for v in ("v002", "v200")}
        expected |= {f"{model}{variant}super_glue_{n}_v102{suffix}" for n in SUPER_GLUE_CASES}
        expected |= {f"{model}{variant}super_glue_wsc_v102_simple_{s}{suffix}" for s in ("train", "eval")}
        expected |= {f"{model}{variant}dpr_v001_simple{suffix}"}
        expected |= {f"{model}{variant}glue_{t}_from_{s}_v002{suffix}" for s, t in (("qqp", "mrpc"), ("mrpc", "qqp"))}
      expected |= {f"{model}{variant}super_glue_{n}_v102_rank_classification"
                   for n in ("boolq", "cb", "copa", "multirc", "rte", "wic")}
      expected |= {f"{model}{variant}glue_{n}_{v}_rank_classification" for v in ("v002", "v200")
                   for n in GLUE_CASES if n not in ("stsb", "ax")}
    expected |= {f"{model}squad_v010_allanswers_examples"}
    expected |= {f"{model}mrqa_{n}_v100_examples" for n in qa.OUT_OF_DOMAIN + qa.IN_DOMAIN}
  assert expected <= tasks, sorted(expected - tasks)[:5]
  assert {"super_glue_wsc_and_dev_v102_simple", "taskless_glue_qqp_from_mrpc_zeroshot_v002",
          "mt5_squad_to_textbook_qa_examples", "task_index_glue_mnli_and_dev_v200_examples",
          "task_index_super_glue_v102_examples_proportional"} <= mixtures


def test_registration_is_idempotent_and_reads_no_data():
  before_tasks, before_mixtures = set(seqio.TaskRegistry.names()), set(seqio.MixtureRegistry.names())
  old = seqio.TaskRegistry.get("taskless_glue_sst2_v200_examples")
  no_data = AssertionError("registration must not touch TFDS")
  with mock.patch.object(tfds, "builder", side_effect=no_data), \
      mock.patch.object(tfds, "load", side_effect=no_data):
    for module in (glue, super_glue, qa, glue_transfer, prompt_tuning.data.tasks):
      importlib.reload(module)
  assert set(seqio.TaskRegistry.names()) == before_tasks
  assert set(seqio.MixtureRegistry.names()) == before_mixtures
  assert seqio.TaskRegistry.get("taskless_glue_sst2_v200_examples") is not old


def test_show_tasks_cli(fake_tfds, capsys):
  assert show_tasks.main(["--list", "--filter", "super_glue_rte_v102"]) == 0
  listed = capsys.readouterr().out.splitlines()
  assert "task\ttaskless_super_glue_rte_v102" in listed
  assert all("super_glue_rte_v102" in line for line in listed)
  assert show_tasks.main(["--task", "taskless_super_glue_rte_v102", "--num", "1"]) == 0
  out = capsys.readouterr().out
  assert "== taskless_super_glue_rte_v102 [validation] ==" in out
  assert "  inputs_pretokenized: hypothesis: Ann made a sound. premise: Ann sang." in out
  assert "  targets_pretokenized: entailment" in out
  assert show_tasks.main(["--task", "no_such_task"]) == 2
  with pytest.raises(SystemExit):
    show_tasks.main(["--task", "taskless_super_glue_rte_v102", "--num", "0"])
