"""Offline demo tasks on a synthetic world (`demo_corpus`); importing this module registers them.

Nothing is downloaded: the text is generated in Python and the vocabulary is a word-level SentencePiece
model trained on the world's word list at first use (deterministic, cached as a file named by its hash).

Tasks (features `inputs` / `targets`, EOS appended; splits `train` and `validation`):

* `demo_pretrain_prefix_lm`: a document cut at a random token; inputs the start, targets the rest
  (T5's LM adaptation objective);
* `demo_pretrain_span_corruption`: T5's span corruption (15% noise, mean span 3 tokens); spans are replaced
  by sentinels `<extra_id_i>` in the inputs and listed after them in the targets;
* `demo_pretrain`: both, in equal proportion;
* `demo_pretrain_lm`: a whole document as `targets` alone (no inputs): language modelling, the decoder-only
  model's own pretraining objective (every token carries loss);
* `demo_sentiment`: a review -> `positive` / `negative` (balanced: chance is 50%), metric accuracy where
  any other output counts as wrong. E.g. "the red lamp is tall and flimsy . ben hates the lamp ." ->
  "negative". Validation reviews use only qualities and verbs that training reviews never contain, so only
  what pretraining taught about those words can classify them;
* `demo_sentiment_sentinel`: the same with `<extra_id_0>` before each target (the targets of span corruption
  start with it), removed from the model's output before the metric;
* `demo_opinion`: a quality statement -> what a buyer does, `hates` / `loves` ("the red lamp is tall and
  flimsy ." -> "hates"), validation on the unseen qualities;
* `demo_choice`: two items of opposite qualities and the one a person bought -> `positive` / `negative`, the
  bought item's ("the lamp is flimsy and the chair is sturdy . ben bought the chair ." -> "positive");
  validation on the unseen qualities;
* `demo_sentiment_ood` (validation only): stories in the pretraining documents' sentence patterns, which the
  training reviews never use ("anna bought a red lamp . it looks flimsy and tall ." -> "negative"): a domain
  shift for `demo_sentiment` (the paper's Table 1);
* `demo_opinion_from_sentiment`, `demo_sentiment_from_opinion` (validation only): zero-shot transfer (the
  paper's Table 2): one task's validation set answered in the other task's labels (`negative` = `hates`,
  `positive` = `loves`);
* mixtures `demo_sentiment_and_shifts` (train `demo_sentiment`; evaluate it, `demo_sentiment_ood` and
  `demo_opinion_from_sentiment`) and `demo_opinion_and_shifts` (train `demo_opinion`; evaluate it and
  `demo_sentiment_from_opinion`).

Every labelled task is balanced (chance is 50%) and scored by accuracy, any output but a label word counting as
wrong.

The sentiment label follows a review only in `demo_sentiment`: the pretraining text never contains it.
"""
from __future__ import annotations

import functools
import hashlib
import io
import os
import tempfile
from typing import Callable, Mapping, Sequence

import seqio
import sentencepiece as spm
import tensorflow as tf

from prompt_tuning.data import demo_corpus
from prompt_tuning.data import metrics
from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import utils

EXTRA_IDS = 100
# Rows of the model's embedding table: the vocabulary (3 + 126 words + 100 sentinels = 229) rounded up to
# a multiple of 128, as T5 does.
NUM_EMBEDDINGS = 256
# Examples per split: enough variety for a few thousand steps; generated in about a second.
PRETRAIN_SIZES = {"train": 50_000, "validation": 1_000}
SENTIMENT_SIZES = {"train": 4_000, "validation": 500}  # every labelled task's
VALIDATION_ONLY = {"validation": SENTIMENT_SIZES["validation"]}
_SEEDS = {("pretrain", "train"): 0, ("pretrain", "validation"): 1,
          ("sentiment", "train"): 2, ("sentiment", "validation"): 3,
          ("opinion", "train"): 4, ("opinion", "validation"): 5,
          ("choice", "train"): 6, ("choice", "validation"): 7, ("story", "validation"): 8}
# The labelled texts: kind -> (generator, label words).
_LABELLED = {"sentiment": (demo_corpus.reviews, demo_corpus.LABELS),
             "opinion": (demo_corpus.quality_reviews, demo_corpus.OPINION_LABELS),
             "choice": (demo_corpus.choices, demo_corpus.LABELS),
             "story": (demo_corpus.stories, demo_corpus.LABELS)}
# Longest pretraining document: 31 tokens (+ EOS); longest labelled text: 15 tokens (+ EOS), a choice.
PRETRAIN_FEATURE_LENGTHS = {"inputs": 32, "targets": 32}
SENTIMENT_FEATURE_LENGTHS = {"inputs": 16, "targets": 2}
# Validation reviews use only qualities and verbs that training reviews never contain.
_HALVES = {"train": 0, "validation": 1}
CACHE_DIR_ENV = "PROMPT_TUNING_DEMO_CACHE"


# ------------------------------------------------------------------------------------------------ vocabulary
def sentencepiece_model(words: Sequence[str] | None = None) -> bytes:
  """A word-level SentencePiece model: pad 0, EOS 1, UNK 2, then word i of `words` (sorted; default
  `vocabulary_words()`) is 3 + i.

  (All words are seen once, and the trainer orders ties by piece, so the ids follow the sorted word list.)
  """
  words = tuple(words or demo_corpus.vocabulary_words())
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(words), model_writer=model, model_type="word",
      vocab_size=len(words) + 3, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      num_threads=1, minloglevel=2)
  return model.getvalue()


def _cache_dir() -> str:
  return os.environ.get(CACHE_DIR_ENV) or os.path.join(tempfile.gettempdir(), "prompt_tuning_demo")


@functools.cache
def sentencepiece_model_path(words: tuple[str, ...] | None = None) -> str:
  """Writes `sentencepiece_model(words)` once (atomically, named by its hash) and returns the file path."""
  proto = sentencepiece_model(words)
  path = os.path.join(_cache_dir(), f"demo_words_{hashlib.sha256(proto).hexdigest()[:12]}.model")
  if not os.path.exists(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=os.path.dirname(path), delete=False) as f:
      f.write(proto)
    os.replace(f.name, path)
  return path


class DemoVocabulary(seqio.SentencePieceVocabulary):
  """The demo's SentencePiece vocabulary (+ `EXTRA_IDS` sentinels) of `words` (default: the demo world's); the
  model file is built on first use."""

  def __init__(self, extra_ids: int = EXTRA_IDS, words: Sequence[str] | None = None):
    self._words = tuple(words) if words else None
    super().__init__("", extra_ids=extra_ids)

  @property
  def sentencepiece_model_file(self) -> str:
    return sentencepiece_model_path(self._words)

  def _model_context(self):
    self._sentencepiece_model_file = sentencepiece_model_path(self._words)
    return super()._model_context()


VOCABULARY = DemoVocabulary()
OUTPUT_FEATURES: Mapping[str, seqio.Feature] = {
    "inputs": seqio.Feature(vocabulary=VOCABULARY, add_eos=True),
    "targets": seqio.Feature(vocabulary=VOCABULARY, add_eos=True),
}


def vocabulary() -> seqio.Vocabulary:
  """The vocabulary of every demo task (for gin: `@prompt_tuning.data.demo.vocabulary()`)."""
  return VOCABULARY


# ------------------------------------------------------------------------------------------------ sources
@functools.cache
def _documents(split: str) -> tuple[str, ...]:
  return tuple(demo_corpus.pretraining_documents(PRETRAIN_SIZES[split], _SEEDS["pretrain", split]))


@functools.cache
def labelled(kind: str, split: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(texts, label words) of one kind of labelled text ("sentiment", "opinion", "choice", "story")."""
  generate, labels = _LABELLED[kind]
  pairs = generate(SENTIMENT_SIZES[split], _SEEDS[kind, split], half=_HALVES[split])
  return tuple(text for text, _ in pairs), tuple(labels[label] for _, label in pairs)


def _shuffled(ds: tf.data.Dataset, shuffle: bool, seed: int | None) -> tf.data.Dataset:
  return ds.shuffle(ds.cardinality(), seed=seed) if shuffle else ds


def _pretrain_dataset(split: str, shuffle_files: bool = False, seed: int | None = None) -> tf.data.Dataset:
  ds = tf.data.Dataset.from_tensor_slices({"text": list(_documents(split))})
  return _shuffled(ds, shuffle_files, seed)


def _labelled_dataset(kind: str, split: str, shuffle_files: bool = False, seed: int | None = None
                      ) -> tf.data.Dataset:
  texts, labels = labelled(kind, split)
  ds = tf.data.Dataset.from_tensor_slices({"inputs": list(texts), "targets": list(labels)})
  return _shuffled(ds, shuffle_files, seed)


def _source(dataset_fn: Callable[..., tf.data.Dataset], sizes: Mapping[str, int]) -> seqio.FunctionDataSource:
  return seqio.FunctionDataSource(dataset_fn, splits=tuple(sizes), num_input_examples=dict(sizes))


# ------------------------------------------------------------------------------------------------ objectives
prefix_lm = preprocessors.prefix_lm_split  # a whole document, cut at a uniform random point


def random_spans_mask(length: tf.Tensor, noise_density: float, mean_span_length: float,
                      seeds: tf.Tensor) -> tf.Tensor:
  """A random [length] bool mask, True on noise (`length` >= 2).

  round(length * noise_density) noise tokens (at least 1) in round(noise / mean_span_length) spans (at least
  1) of random lengths, between clean runs of random lengths; the whole pattern is rolled by a random offset
  so that a single span can fall anywhere in a short text.
  """
  num_noise = tf.clip_by_value(tf.cast(tf.round(tf.cast(length, tf.float32) * noise_density), tf.int32),
                               1, length - 1)
  num_spans = tf.clip_by_value(
      tf.cast(tf.round(tf.cast(num_noise, tf.float32) / mean_span_length), tf.int32), 1, length - num_noise)

  def run_lengths(total: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    # num_spans positive parts summing to total: cut [0, total) at num_spans - 1 distinct random points.
    points = tf.random.experimental.stateless_shuffle(tf.range(1, total), seed)[:num_spans - 1]
    bounds = tf.concat([[0], tf.sort(points), [total]], axis=0)
    return bounds[1:] - bounds[:-1]

  clean = run_lengths(length - num_noise, seeds[0])
  noise = run_lengths(num_noise, seeds[1])
  runs = tf.reshape(tf.stack([clean, noise], axis=1), [-1])
  mask = tf.repeat(tf.tile([False, True], [num_spans]), runs)
  shift = tf.random.stateless_uniform([], seeds[2], maxval=length, dtype=tf.int32)
  return tf.roll(mask, shift, axis=0)


def _with_sentinels(tokens: tf.Tensor, noise: tf.Tensor, vocab_size: int, keep_noise: bool) -> tf.Tensor:
  """Puts a sentinel (`vocab_size - 1`, `- 2`, ... in order) before each noise span, then keeps the noise
  tokens (`keep_noise`: the targets) or the clean ones (the inputs)."""
  first = noise & ~tf.concat([[False], noise[:-1]], axis=0)
  sentinels = vocab_size - tf.cumsum(tf.cast(first, tokens.dtype))
  kept = noise if keep_noise else ~noise
  pairs = tf.stack([tf.where(first, sentinels, -1), tf.where(kept, tokens, -1)], axis=1)
  pairs = tf.reshape(pairs, [-1])
  return tf.boolean_mask(pairs, pairs >= 0)


@seqio.map_over_dataset(num_seeds=3)
def _corrupt_spans(x: Mapping[str, tf.Tensor], seeds: tf.Tensor, vocab_size: int, noise_density: float,
                   mean_span_length: float) -> dict[str, tf.Tensor]:
  tokens = x["targets"]
  mask = random_spans_mask(tf.size(tokens), noise_density, mean_span_length, seeds)
  return {"inputs": _with_sentinels(tokens, mask, vocab_size, keep_noise=False),
          "targets": _with_sentinels(tokens, mask, vocab_size, keep_noise=True)}


def span_corruption(dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature],
                    noise_density: float = 0.15, mean_span_length: float = 3.0) -> tf.data.Dataset:
  """T5's span corruption of the tokenized `targets` (inputs: text with sentinels; targets: the spans)."""
  dataset = dataset.filter(lambda x: tf.size(x["targets"]) >= 2)
  return _corrupt_spans(dataset, vocab_size=output_features["targets"].vocabulary.vocab_size,
                        noise_density=noise_density, mean_span_length=mean_span_length)


# ------------------------------------------------------------------------------------------------ tasks
def label_postprocessor(labels: Sequence[str], answered_in: Sequence[str] | None = None) -> Callable[..., int]:
  """Text -> its class id in `labels`; anything that is not exactly a label word is -1 (always wrong).

  With `answered_in` (another task's label words, index-aligned with `labels`), predictions are read in those
  words and targets in `labels`: a model trained on the other task, evaluated zero-shot."""
  def postprocess(output: str, example=None, is_target: bool = False) -> int:
    del example
    words = labels if is_target or answered_in is None else answered_in
    return postprocessors.string_label_to_class_id(output.strip(), words)
  return postprocess


sentiment_postprocessor = label_postprocessor(demo_corpus.LABELS)


def _add_labelled_task(name: str, kind: str, sizes: Mapping[str, int], postprocess_fn: Callable[..., int],
                       token_steps: Sequence[Callable[..., tf.data.Dataset]] = ()) -> None:
  utils.add_task(name, source=_source(functools.partial(_labelled_dataset, kind), sizes),
                 preprocessors=[seqio.preprocessors.tokenize, *token_steps, seqio.CacheDatasetPlaceholder(),
                                seqio.preprocessors.append_eos_after_trim],
                 output_features=OUTPUT_FEATURES, postprocess_fn=postprocess_fn, metric_fns=[metrics.accuracy])


def register() -> None:
  pretrain_source = _source(_pretrain_dataset, PRETRAIN_SIZES)
  rekey = functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"})
  for name, objective in (("prefix_lm", prefix_lm), ("span_corruption", span_corruption)):
    utils.add_task(f"demo_pretrain_{name}", source=pretrain_source,
                   preprocessors=[rekey, seqio.preprocessors.tokenize, objective,
                                  seqio.preprocessors.append_eos_after_trim],
                   output_features=OUTPUT_FEATURES)
  utils.add_mixture("demo_pretrain", ["demo_pretrain_prefix_lm", "demo_pretrain_span_corruption"],
                    default_rate=1.0)
  utils.add_task("demo_pretrain_lm", source=pretrain_source,
                 preprocessors=[rekey, seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
                 output_features={"targets": OUTPUT_FEATURES["targets"]})
  _add_labelled_task("demo_sentiment", "sentiment", SENTIMENT_SIZES, sentiment_postprocessor)
  _add_labelled_task(f"demo_sentiment{utils.SENTINEL}", "sentiment", SENTIMENT_SIZES,
                     postprocessors.sequential(postprocessors.remove_sentinel, sentiment_postprocessor),
                     [preprocessors.add_target_sentinel])
  opinion, sentiment = demo_corpus.OPINION_LABELS, demo_corpus.LABELS
  _add_labelled_task("demo_opinion", "opinion", SENTIMENT_SIZES, label_postprocessor(opinion))
  _add_labelled_task("demo_choice", "choice", SENTIMENT_SIZES, sentiment_postprocessor)
  _add_labelled_task("demo_sentiment_ood", "story", VALIDATION_ONLY, sentiment_postprocessor)
  _add_labelled_task("demo_opinion_from_sentiment", "opinion", VALIDATION_ONLY,
                     label_postprocessor(opinion, answered_in=sentiment))
  _add_labelled_task("demo_sentiment_from_opinion", "sentiment", VALIDATION_ONLY,
                     label_postprocessor(sentiment, answered_in=opinion))
  utils.add_mixture("demo_sentiment_and_shifts",
                    ["demo_sentiment", "demo_sentiment_ood", "demo_opinion_from_sentiment"], default_rate=1.0)
  utils.add_mixture("demo_opinion_and_shifts", ["demo_opinion", "demo_sentiment_from_opinion"], default_rate=1.0)


register()
