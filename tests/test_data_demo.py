"""The offline demo data: synthetic corpus, word vocabulary, pretraining objectives and the sentiment task."""
from __future__ import annotations

import collections
import re

import numpy as np
import pytest
import seqio
import tensorflow as tf

from prompt_tuning.data import demo
from prompt_tuning.data import demo_corpus

VOCAB = demo.VOCABULARY
LABEL_RE = "|".join(demo_corpus.LABELS)
DOCUMENTS = frozenset(demo._documents("train"))  # pylint: disable=protected-access


def _examples(name: str, split: str = "train", num: int = 64, seed: int = 3) -> list[dict[str, np.ndarray]]:
  """The first `num` examples (unshuffled: `seed` only drives the preprocessors' randomness)."""
  lengths = demo.PRETRAIN_FEATURE_LENGTHS if "pretrain" in name else demo.SENTIMENT_FEATURE_LENGTHS
  ds = seqio.get_mixture_or_task(name).get_dataset(lengths, split=split, shuffle=False, seed=seed)
  return list(ds.take(num).as_numpy_iterator())


def _strip_eos(ids: np.ndarray) -> list[int]:
  ids = ids.tolist()
  assert ids[-1] == VOCAB.eos_id, f"no EOS at the end of {ids}"
  return ids[:-1]


# ---------------------------------------------------------------------------------------------- corpus
def test_generators_are_deterministic_and_seeded():
  assert demo_corpus.pretraining_documents(20, seed=5) == demo_corpus.pretraining_documents(20, seed=5)
  assert demo_corpus.pretraining_documents(20, seed=5) != demo_corpus.pretraining_documents(20, seed=6)
  assert demo_corpus.reviews(20, seed=5, half=0) == demo_corpus.reviews(20, seed=5, half=0)
  assert demo_corpus.reviews(20, seed=5, half=0) != demo_corpus.reviews(20, seed=6, half=0)


def test_every_generated_word_is_in_the_vocabulary_word_list():
  texts = demo_corpus.pretraining_documents(2000, seed=0) + [
      r for half in (0, 1) for r, _ in demo_corpus.reviews(500, seed=0, half=half)]
  used = {w for t in texts for w in t.split(" ")}
  assert used == set(demo_corpus.vocabulary_words())


def test_reviews_are_balanced_and_halves_use_disjoint_sentiment_words():
  polar = set(sum(demo_corpus.QUALITIES + demo_corpus.VERBS, ()))
  words = {}
  for half in (0, 1):
    pairs = demo_corpus.reviews(200, seed=half, half=half)
    assert collections.Counter(label for _, label in pairs) == {0: 100, 1: 100}
    words[half] = {w for r, _ in pairs for w in r.split() if w in polar}
    for review, label in pairs:  # every sentiment word of a review has the review's polarity
      for w in set(review.split()) & polar:
        assert w in demo_corpus.QUALITIES[label] + demo_corpus.VERBS[label], (review, label)
  assert words[0] and words[1] and not words[0] & words[1]
  with pytest.raises(ValueError, match="half=2"):
    demo_corpus.reviews(2, seed=0, half=2)


def test_pretraining_text_never_maps_a_review_to_its_label():
  docs = demo._documents("train") + demo._documents("validation")  # pylint: disable=protected-access
  frame = rf"{demo_corpus.LABEL_FRAME[0]} ({LABEL_RE}) {demo_corpus.LABEL_FRAME[1]} "
  with_label = [d for d in docs if re.search(rf"\b({LABEL_RE})\b", d)]
  assert len(with_label) > len(docs) // 4  # the model does learn to emit the label words...
  for doc in with_label:  # ...but only inside "feels {label} about the {item}", never after a text.
    assert len(re.findall(rf"\b({LABEL_RE})\b", doc)) == len(re.findall(frame, doc)), doc
    assert not re.search(rf"(^|\. )({LABEL_RE})\b", doc) and not re.search(rf"({LABEL_RE}) \.?$", doc), doc


# ---------------------------------------------------------------------------------------------- vocabulary
def test_vocabulary_is_built_deterministically_with_one_piece_per_word():
  assert demo.sentencepiece_model() == demo.sentencepiece_model()
  words = demo_corpus.vocabulary_words()
  assert VOCAB.vocab_size == 3 + len(words) + demo.EXTRA_IDS
  assert demo.NUM_EMBEDDINGS == -(-VOCAB.vocab_size // 128) * 128
  assert (VOCAB.pad_id, VOCAB.eos_id, VOCAB.unk_id) == (0, 1, 2)
  ids = VOCAB.encode(" ".join(words))
  assert ids == list(range(3, 3 + len(words)))  # ids follow the sorted word list, whatever the trainer
  assert VOCAB.decode(ids) == " ".join(words)
  assert VOCAB.encode("<extra_id_0>") == [VOCAB.vocab_size - 1]
  text = "the red lamp is flimsy . ben hates it ."
  assert VOCAB.decode(VOCAB.encode_tf(tf.constant(text)).numpy().tolist()) == text


# ---------------------------------------------------------------------------------------------- tasks
def test_tasks_and_mixture_are_registered():
  for name in ("demo_pretrain_prefix_lm", "demo_pretrain_span_corruption", "demo_sentiment"):
    task = seqio.get_mixture_or_task(name)
    assert set(task.splits) == {"train", "validation"}
    assert set(task.output_features) == {"inputs", "targets"}
    assert all(f.add_eos and f.vocabulary is VOCAB for f in task.output_features.values())
  mixture = seqio.get_mixture_or_task("demo_pretrain")
  assert {t.name for t in mixture.tasks} == {"demo_pretrain_prefix_lm", "demo_pretrain_span_corruption"}


def test_pretraining_examples_are_deterministic_for_a_seed():
  for name in ("demo_pretrain_prefix_lm", "demo_pretrain_span_corruption"):
    first, again, other = _examples(name, num=8), _examples(name, num=8), _examples(name, num=8, seed=4)
    same = lambda a, b: all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in ("inputs", "targets"))
    assert same(first, again) and not same(first, other)


def test_language_modelling_examples_are_whole_documents_as_targets():
  """`demo_pretrain_lm` (the decoder-only model's pretraining): no inputs; targets a document and EOS, in order."""
  task = seqio.get_mixture_or_task("demo_pretrain_lm")
  assert set(task.output_features) == {"targets"} and set(task.splits) == {"train", "validation"}
  examples = list(task.get_dataset({"targets": 32}, split="train", shuffle=False).take(8).as_numpy_iterator())
  docs = demo._documents("train")[:8]  # pylint: disable=protected-access
  assert [VOCAB.decode(_strip_eos(ex["targets"])) for ex in examples] == list(docs)
  assert all("inputs" not in ex for ex in examples)


def test_sentiment_examples_are_a_review_and_a_label_word():
  examples = _examples("demo_sentiment", split="validation", num=100)
  labels = collections.Counter()
  for ex in examples:
    review, label = VOCAB.decode(_strip_eos(ex["inputs"])), VOCAB.decode(_strip_eos(ex["targets"]))
    assert re.fullmatch(r"([a-z]+ )+\.( ([a-z]+ )+\.)?", review), review
    assert ex["inputs_pretokenized"].decode() == review
    labels[label] += 1
    assert len(ex["inputs"]) <= demo.SENTIMENT_FEATURE_LENGTHS["inputs"]
    assert len(ex["targets"]) == demo.SENTIMENT_FEATURE_LENGTHS["targets"]
  assert set(labels) == set(demo_corpus.LABELS) and min(labels.values()) >= 35


def test_sentiment_metric_counts_other_outputs_as_wrong():
  task = seqio.get_mixture_or_task("demo_sentiment")
  post = lambda text: task.postprocess_fn(text, example={}, is_target=False)
  assert [post(t) for t in ("negative", " positive ", "positive .", "")] == [0, 1, -1, -1]
  targets = [post(t) for t in ("positive", "negative", "positive", "negative")]
  predictions = [post(t) for t in ("positive", "positive", "happy", "negative")]
  assert task.metric_fns[0](targets, predictions) == {"accuracy": 50.0}


def test_prefix_lm_splits_a_document_into_start_and_rest():
  for ex in _examples("demo_pretrain_prefix_lm", num=32):
    inputs, targets = _strip_eos(ex["inputs"]), _strip_eos(ex["targets"])
    assert inputs and targets
    assert VOCAB.decode(inputs + targets) in DOCUMENTS


def _fill_sentinels(inputs: list[int], targets: list[int]) -> tuple[list[int], int]:
  """The text that span corruption cut into `inputs` and `targets`, and its number of noise tokens."""
  is_sentinel = lambda t: t >= VOCAB.vocab_size - demo.EXTRA_IDS
  assert is_sentinel(targets[0]), targets
  spans = {}
  for t in targets:
    if is_sentinel(t):
      current = spans[t] = []
    else:
      current.append(t)
  assert list(spans) == sorted(spans, reverse=True)  # <extra_id_0>, <extra_id_1>, ... in order
  num_noise = sum(len(span) for span in spans.values())
  text = [tok for t in inputs for tok in (spans.pop(t) if is_sentinel(t) else [t])]
  assert not spans, f"sentinels {list(spans)} of the targets are not in the inputs"
  return text, num_noise


def test_span_corruption_hides_spans_behind_matching_sentinels():
  for ex in _examples("demo_pretrain_span_corruption", num=64):
    text, num_noise = _fill_sentinels(_strip_eos(ex["inputs"]), _strip_eos(ex["targets"]))
    assert VOCAB.decode(text) in DOCUMENTS
    assert num_noise >= 1 and abs(num_noise - 0.15 * len(text)) <= 0.51


def test_random_spans_mask_has_the_asked_noise_and_span_count():
  for length, seed in ((10, 0), (31, 1), (200, 2)):
    seeds = tf.constant([[seed, 0], [seed, 1], [seed, 2]])
    mask = demo.random_spans_mask(tf.constant(length), 0.15, 3.0, seeds).numpy()
    assert len(mask) == length and abs(mask.sum() - 0.15 * length) <= 0.51
    spans = np.sum(mask & ~np.roll(mask, 1))  # counted cyclically: the pattern is rolled
    assert spans == max(1, round(mask.sum() / 3.0))


# ---------------------------------------------------------------------------------------------- more tasks
def test_labelled_generators_give_these_exact_texts():
  assert demo_corpus.quality_reviews(2, seed=0, half=0) == [
      ("the red scarf is light and clumsy .", 0), ("the grey oven is light and handy .", 1)]
  assert demo_corpus.stories(2, seed=0, half=1) == [
      ("nora found a white chair . nora regrets it because it is faulty .", 0),
      ("leo found a green clock . leo likes it because it is reliable .", 1)]
  assert demo_corpus.choices(2, seed=0, half=1) == [
      ("the scarf is awful and the lamp is solid . mia bought the scarf .", 0),
      ("the radio is reliable and the desk is awful . ella bought the radio .", 1)]
  with pytest.raises(ValueError, match="half=3 must be 0 or 1"):
    demo_corpus.choices(2, seed=0, half=3)


def test_choices_oppose_two_items_and_label_the_bought_one():
  polarity = {w: p for p, words in enumerate(demo_corpus.QUALITIES) for w in words}
  pairs = demo_corpus.choices(400, seed=1, half=0)
  assert collections.Counter(label for _, label in pairs) == {0: 200, 1: 200}
  for text, label in pairs:
    match = re.fullmatch(r"the (\w+) is (\w+) and the (\w+) is (\w+) \. \w+ bought the (\w+) \.", text)
    assert match, text
    first, q1, second, q2, bought = match.groups()
    assert first != second and polarity[q1] == 1 - polarity[q2] and q1 in demo_corpus.QUALITIES[polarity[q1]][0::2]
    assert polarity[q1 if bought == first else q2] == label, text


def test_stories_use_pretraining_patterns_that_training_reviews_never_use():
  reviews = {r for r, _ in demo_corpus.reviews(4000, seed=2, half=0)}
  for story, label in demo_corpus.stories(200, seed=8, half=1):
    assert re.fullmatch(r"\w+ (bought|found) a \w+ \w+ \. .*", story), story
    assert " it " in story and story not in reviews
    words = set(story.split()) & set(sum(demo_corpus.QUALITIES + demo_corpus.VERBS, ()))
    assert words and all(w in demo_corpus.QUALITIES[label][1::2] + demo_corpus.VERBS[label][1::2] for w in words)


def test_new_tasks_splits_and_label_words():
  expected = {"demo_opinion": ({"train", "validation"}, set(demo_corpus.OPINION_LABELS)),
              "demo_choice": ({"train", "validation"}, set(demo_corpus.LABELS)),
              "demo_sentiment_ood": ({"validation"}, set(demo_corpus.LABELS)),
              "demo_opinion_from_sentiment": ({"validation"}, set(demo_corpus.OPINION_LABELS)),
              "demo_sentiment_from_opinion": ({"validation"}, set(demo_corpus.LABELS))}
  for name, (splits, labels) in expected.items():
    assert set(seqio.get_mixture_or_task(name).splits) == splits, name
    examples = _examples(name, split="validation", num=40)
    assert {VOCAB.decode(_strip_eos(ex["targets"])) for ex in examples} == labels, name
    assert all(len(ex["inputs"]) <= demo.SENTIMENT_FEATURE_LENGTHS["inputs"] for ex in examples)
  first = _examples("demo_opinion", split="validation", num=1)[0]
  assert first["inputs_pretokenized"].decode() == demo.labelled("opinion", "validation")[0][0]
  mixtures = {"demo_sentiment_and_shifts": {"demo_sentiment", "demo_sentiment_ood", "demo_opinion_from_sentiment"},
              "demo_opinion_and_shifts": {"demo_opinion", "demo_sentiment_from_opinion"}}
  for name, tasks in mixtures.items():
    assert {t.name for t in seqio.get_mixture_or_task(name).tasks} == tasks


def test_zero_shot_tasks_read_predictions_in_the_training_tasks_labels():
  task = seqio.get_mixture_or_task("demo_opinion_from_sentiment")
  post = lambda text, is_target: task.postprocess_fn(text, example={}, is_target=is_target)
  assert [post(t, True) for t in ("hates", "loves")] == [0, 1]
  assert [post(t, False) for t in ("negative", "positive", "loves", "")] == [0, 1, -1, -1]
  back = seqio.get_mixture_or_task("demo_sentiment_from_opinion")
  assert back.postprocess_fn("loves", example={}, is_target=False) == 1
  assert back.postprocess_fn("positive", example={}, is_target=True) == 1
  opinion = seqio.get_mixture_or_task("demo_opinion")
  assert [opinion.postprocess_fn(t, example={}, is_target=False) for t in ("hates", "negative")] == [0, -1]
