"""The paper's Figure 3c data: `_sentinel` task variants (targets start with `<extra_id_0>`, removed before the
metrics) and the C4 prefix-LM task of LM adaptation (TFDS mocked with hand-written examples)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import seqio

import prompt_tuning.data.tasks  # pylint: disable=unused-import
import tfds_fakes
from prompt_tuning.data import demo, vocab
from tfds_fakes import examples

EXTRA_ID_0 = 32099  # the T5 vocabulary's last id: 32,000 pieces + 100 sentinels
RTE = {"premise": "Ann sang.", "hypothesis": "Ann made a sound.", "idx": 8, "label": 0}
WSC_TEXT = "Mark told Pete many lies about himself , which Pete included in his book ."
# C4 2.2.0's fields (the builder's code now also declares content-type and content-length).
C4_DOC = {"text": "The dog ran to the park.", "url": "https://example.com/dog", "timestamp": "2019-04-25T00:00:00Z"}
TFDS_DATA = {
    ("super_glue/rte", "validation"): [RTE],
    ("super_glue/cb", "validation"): [{"premise": "It may rain.", "hypothesis": "It rains.", "idx": 1, "label": 2}],
    ("super_glue/wsc.fixed", "validation"): [
        {"text": WSC_TEXT, "span1_index": 2, "span1_text": "Pete", "span2_index": 12, "span2_text": "his",
         "idx": 0, "label": 0}],
    ("c4/en", "train"): [C4_DOC],
    ("c4/en", "validation"): [
        {**C4_DOC, "text": f"Doc {i} tells how the {w} sat on the long mat near the open door." }
        for i, w in enumerate(("cat", "dog", "hen", "cow", "fox", "owl"))],
}


@pytest.fixture(scope="module")
def fake_tfds(t5_vocab_path):
  with tfds_fakes.serving(tfds_fakes.FakeTfds(TFDS_DATA, partial_builders=("c4",)), t5_vocab_path) as fake:
    yield fake


def _evaluate(name: str, outputs: list[list[int]]) -> dict[str, Any]:
  """seqio's evaluation of `name` given each example's decoded token ids."""
  evaluator = seqio.Evaluator(name, feature_converter=seqio.EncDecFeatureConverter(pack=False))
  predict_fn = lambda ds: [(i, (outputs[i] + [1] + [0] * 8)[:8]) for i, _ in ds.as_numpy_iterator()]
  metrics_future, _ = evaluator.evaluate(compute_metrics=True, predict_fn=predict_fn)
  return metrics_future.result()[name]


# ------------------------------------------------------------------------------------------------- sentinel
@pytest.mark.parametrize("variant", ["", "taskless_", "task_index_"])
def test_sentinel_variant_prepends_extra_id_0_to_targets(fake_tfds, variant):
  (plain,) = examples(f"{variant}super_glue_rte_v102")
  (sentinel,) = examples(f"{variant}super_glue_rte_v102_sentinel")
  assert sentinel["targets"][0] == EXTRA_ID_0
  np.testing.assert_array_equal(sentinel["targets"][1:], plain["targets"])
  np.testing.assert_array_equal(sentinel["inputs"], plain["inputs"])  # task_index_ keeps its inputs sentinel
  assert sentinel["targets_pretokenized"] == b"entailment"
  assert vocab.get_t5_vocabulary().decode(sentinel["targets"].tolist()) == "<extra_id_0> entailment"


def test_metrics_see_the_label_without_the_sentinel(fake_tfds):
  t5 = vocab.get_t5_vocabulary()
  rows = [{"premise": f"P{i}.", "hypothesis": f"H{i}.", "idx": i, "label": label} for i, label in enumerate((0, 1, 0))]
  name = tfds_fakes.clone_on_rows("taskless_super_glue_rte_v102_sentinel_examples", rows)
  outputs = [[EXTRA_ID_0, *t5.encode("entailment")], [EXTRA_ID_0, *t5.encode("entailment")],
             t5.encode("entailment")]  # right, wrong, right without the sentinel
  result = _evaluate(name, outputs)
  assert result["accuracy"] == pytest.approx(200 / 3)
  negative = result["rte negative samples"].textdata
  assert "prediction: <extra_id_0> entailment" in negative and "H1." in negative
  task = seqio.get_mixture_or_task("super_glue_cb_v102_sentinel")
  example = {"inputs_pretokenized": b"x", "targets_pretokenized": b"neutral"}
  assert [task.postprocess_fn(text, example=example) for text in
          ("<extra_id_0> neutral", "<extra_id_0>contradiction", "neutral", "<extra_id_1> neutral")] == [2, 1, 2, -1]
  assert task.postprocess_fn("neutral", example=example, is_target=True) == 2


def test_wsc_and_rank_classification_sentinel_variants(fake_tfds):
  (wsc,) = examples("super_glue_wsc_v102_simple_eval_sentinel")
  assert wsc["targets_pretokenized"] == b"Pete" and wsc["targets"][0] == EXTRA_ID_0
  task = seqio.get_mixture_or_task("super_glue_wsc_v102_simple_eval_sentinel")
  assert task.postprocess_fn("<extra_id_0> Pete", example=wsc) == 1  # the referent, not "<extra_id_0> Pete"
  ranked = examples("taskless_super_glue_cb_v102_sentinel_rank_classification")
  assert [vocab.get_t5_vocabulary().decode(ex["targets"].tolist()) for ex in ranked] == [
      "<extra_id_0> entailment", "<extra_id_0> contradiction", "<extra_id_0> neutral"]
  mixture = seqio.get_mixture_or_task("taskless_super_glue_wsc_and_dev_v102_simple_sentinel_examples")
  assert {t.name for t in mixture.tasks} == {"taskless_super_glue_wsc_v102_simple_train_sentinel_examples",
                                             "taskless_super_glue_wsc_v102_simple_eval_sentinel_examples"}
  names = set(seqio.TaskRegistry.names())
  assert {f"{m}{v}super_glue_{t}_v102_sentinel{s}" for m in ("", "mt5_") for v in ("", "taskless_", "task_index_")
          for t in ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "axb", "axg")
          for s in ("", "_examples")} <= names
  assert "dpr_v001_simple_sentinel" in names


def test_demo_sentiment_sentinel():
  plain, sentinel = (next(seqio.get_mixture_or_task(n).get_dataset(None, split="validation", shuffle=False)
                          .as_numpy_iterator()) for n in ("demo_sentiment", "demo_sentiment_sentinel"))
  extra_id_0 = demo.VOCABULARY.vocab_size - 1
  assert sentinel["targets"].tolist() == [extra_id_0, *plain["targets"].tolist()]
  label = plain["targets_pretokenized"].decode()
  assert demo.VOCABULARY.decode(sentinel["targets"].tolist()) == f"<extra_id_0> {label}"
  task = seqio.get_mixture_or_task("demo_sentiment_sentinel")
  assert task.postprocess_fn(f"<extra_id_0> {label}") == demo.sentiment_postprocessor(label) >= 0


# ------------------------------------------------------------------------------------------------------- C4
def _c4(split: str, inputs_length: int | None) -> list[tuple[list[int], list[int]]]:
  """(inputs, targets) token ids of `c4_v220_prefix_lm`, each without its EOS."""
  lengths = None if inputs_length is None else {"inputs": inputs_length, "targets": 64}
  dataset = seqio.get_mixture_or_task("c4_v220_prefix_lm").get_dataset(lengths, split=split, shuffle=False,
                                                                             try_in_mem_cache=False)
  out = []
  for ex in dataset.as_numpy_iterator():
    assert ex["inputs"][-1] == 1 and ex["targets"][-1] == 1  # EOS on both
    out.append((ex["inputs"][:-1].tolist(), ex["targets"][:-1].tolist()))
  return out


def test_c4_prefix_lm_exact_pieces(fake_tfds):
  # Inputs length 3: pieces of 2 tokens (+ EOS), each necessarily cut after its first token; the last piece
  # ("." alone) is too short to cut and is dropped.
  t5 = vocab.get_t5_vocabulary()
  assert [(t5.decode(i), t5.decode(t)) for i, t in _c4("train", 3)] == [("The", "dog"), ("ran", "to"), ("the", "park")]
  assert ("c4/en", "2.2.0", "train") in fake_tfds.reads


def test_c4_prefix_lm_cuts_each_piece_at_a_random_point(fake_tfds):
  t5 = vocab.get_t5_vocabulary()
  expected = []  # each document in consecutive pieces of 7 tokens (inputs length 8 leaves room for EOS)
  for doc in TFDS_DATA["c4/en", "validation"]:
    tokens = t5.encode(doc["text"])
    expected += [tokens[i:i + 7] for i in range(0, len(tokens), 7) if len(tokens[i:i + 7]) >= 2]
  pairs = _c4("validation", 8)
  assert [i + t for i, t in pairs] == expected
  assert all(i and t for i, t in pairs)
  assert len({len(i) for i, _ in pairs}) > 1  # the cut moves
  # Without a sequence length (inspecting examples), a document is one piece, cut once.
  (whole,) = _c4("train", None)
  assert whole[0] + whole[1] == t5.encode(C4_DOC["text"])
