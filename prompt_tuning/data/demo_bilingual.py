"""The demo world in two languages, for a micro zero-shot cross-lingual run; importing this module registers the
tasks.

Language "a" is the demo world's own text; language "b" renders the same text through a made-up vocabulary
(`demo_corpus.translate`: names, the full stop and the label words are shared). One vocabulary holds both
(`vocabulary()`, `NUM_EMBEDDINGS` rows); nothing is downloaded.

* `demo_bilingual_pretrain` (`_prefix_lm`, `_span_corruption`): the demo pretraining objectives on documents
  of both languages, alternating (different documents in each: no parallel text);
* `demo_bilingual_sentiment_a`, `demo_bilingual_sentiment_b`: `demo_sentiment` in each language (train and
  validation; "b"'s texts are "a"'s translated), targets `negative` / `positive` in both, accuracy;
* `demo_bilingual_sentiment_b_zeroshot`: "b"'s validation only; mixture `demo_bilingual_sentiment_zeroshot`:
  train on "a", evaluate "a" and "b";
* factorised language x task prompts (`families/multilingual.gin`, `SENTINEL_VOCAB_SIZE = VOCAB_SIZE`):
  `demo_bilingual_lang_task_sentiment_a` / `_b_zeroshot` start with `<extra_id_l>` (the language, a = 0,
  b = 1) then `<extra_id_0>` (the sentiment task); `demo_bilingual_lang_task_lm_{a,b}` are prefix LM on each
  language's documents after `<extra_id_l> <extra_id_1>`; mixture `demo_bilingual_lang_task_sentiment_zeroshot`
  trains the sentiment task on "a" (half the examples) and both language prompts on prefix LM, and evaluates the
  sentiment task in "a" and in "b" with "b"'s language prompt.
"""
from __future__ import annotations

import functools
from typing import Callable, Mapping

import seqio
import tensorflow as tf

from prompt_tuning.data import demo
from prompt_tuning.data import demo_corpus
from prompt_tuning.data import metrics
from prompt_tuning.data import preprocessors
from prompt_tuning.data import utils

WORDS = demo_corpus.bilingual_vocabulary_words()
VOCABULARY = demo.DemoVocabulary(words=WORDS)
VOCAB_SIZE = 3 + len(WORDS) + demo.EXTRA_IDS  # pad, EOS, UNK, the words, the sentinels
NUM_EMBEDDINGS = -(-VOCAB_SIZE // 128) * 128  # rounded up to a multiple of 128, as T5 does
OUTPUT_FEATURES: Mapping[str, seqio.Feature] = {
    "inputs": seqio.Feature(vocabulary=VOCABULARY, add_eos=True),
    "targets": seqio.Feature(vocabulary=VOCABULARY, add_eos=True),
}
LANG_INDEX = {language: i for i, language in enumerate(demo_corpus.LANGUAGES)}
TASK_INDEX = {"sentiment": 0, "lm": 1}
_B_DOCUMENT_SEED = 100  # "b"'s pretraining documents are other documents than "a"'s


def vocabulary() -> seqio.Vocabulary:
  """The vocabulary of both languages (for gin: `@prompt_tuning.data.demo_bilingual.vocabulary()`)."""
  return VOCABULARY


@functools.cache
def documents(language: str, split: str) -> tuple[str, ...]:
  seed = demo._SEEDS["pretrain", split] + (_B_DOCUMENT_SEED if language == "b" else 0)  # pylint: disable=protected-access
  return tuple(demo_corpus.translate(d, language)
               for d in demo_corpus.pretraining_documents(demo.PRETRAIN_SIZES[split], seed))


def _interleaved(split: str) -> list[str]:
  return [d for pair in zip(documents("a", split), documents("b", split)) for d in pair]


def _pretrain_dataset(split: str, shuffle_files: bool = False, seed: int | None = None,
                      languages: tuple[str, ...] = demo_corpus.LANGUAGES) -> tf.data.Dataset:
  texts = _interleaved(split) if len(languages) == 2 else list(documents(languages[0], split))
  ds = tf.data.Dataset.from_tensor_slices({"text": texts})
  return ds.shuffle(ds.cardinality(), seed=seed) if shuffle_files else ds


def _sentiment_dataset(language: str, split: str, shuffle_files: bool = False, seed: int | None = None
                       ) -> tf.data.Dataset:
  texts, labels = demo.labelled("sentiment", split)
  ds = tf.data.Dataset.from_tensor_slices({"inputs": [demo_corpus.translate(t, language) for t in texts],
                                           "targets": list(labels)})
  return ds.shuffle(ds.cardinality(), seed=seed) if shuffle_files else ds


def _source(dataset_fn: Callable[..., tf.data.Dataset], sizes: Mapping[str, int]) -> seqio.FunctionDataSource:
  return seqio.FunctionDataSource(dataset_fn, splits=tuple(sizes), num_input_examples=dict(sizes))


def _lang_task(language: str, task: str) -> list[Callable[..., tf.data.Dataset]]:
  return [functools.partial(preprocessors.add_language_and_task_sentinels, language=LANG_INDEX[language],
                            task=TASK_INDEX[task])]


def _add_sentiment(name: str, language: str, sizes: Mapping[str, int], token_steps=()) -> str:
  utils.add_task(name, source=_source(functools.partial(_sentiment_dataset, language), sizes),
                 preprocessors=[seqio.preprocessors.tokenize, *token_steps, seqio.CacheDatasetPlaceholder(),
                                seqio.preprocessors.append_eos_after_trim],
                 output_features=OUTPUT_FEATURES, postprocess_fn=demo.sentiment_postprocessor,
                 metric_fns=[metrics.accuracy])
  return name


def register() -> None:
  rekey = functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"})
  pretrain = _source(_pretrain_dataset, {k: 2 * v for k, v in demo.PRETRAIN_SIZES.items()})
  for name, objective in (("prefix_lm", demo.prefix_lm), ("span_corruption", demo.span_corruption)):
    utils.add_task(f"demo_bilingual_pretrain_{name}", source=pretrain,
                   preprocessors=[rekey, seqio.preprocessors.tokenize, objective,
                                  seqio.preprocessors.append_eos_after_trim],
                   output_features=OUTPUT_FEATURES)
  utils.add_mixture("demo_bilingual_pretrain",
                    ["demo_bilingual_pretrain_prefix_lm", "demo_bilingual_pretrain_span_corruption"], default_rate=1.0)
  for language in demo_corpus.LANGUAGES:
    _add_sentiment(f"demo_bilingual_sentiment_{language}", language, demo.SENTIMENT_SIZES)
  zeroshot = _add_sentiment("demo_bilingual_sentiment_b_zeroshot", "b", demo.VALIDATION_ONLY)
  utils.add_mixture("demo_bilingual_sentiment_zeroshot", ["demo_bilingual_sentiment_a", zeroshot], default_rate=1.0)

  sentiment_a = _add_sentiment("demo_bilingual_lang_task_sentiment_a", "a", demo.SENTIMENT_SIZES,
                               _lang_task("a", "sentiment"))
  sentiment_b = _add_sentiment("demo_bilingual_lang_task_sentiment_b_zeroshot", "b", demo.VALIDATION_ONLY,
                               _lang_task("b", "sentiment"))
  lm = []
  for language in demo_corpus.LANGUAGES:
    source = _source(functools.partial(_pretrain_dataset, languages=(language,)), demo.PRETRAIN_SIZES)
    lm.append(utils.add_task(f"demo_bilingual_lang_task_lm_{language}", source=source,
                             preprocessors=[rekey, seqio.preprocessors.tokenize, demo.prefix_lm,
                                            *_lang_task(language, "lm"), seqio.preprocessors.append_eos_after_trim],
                             output_features=OUTPUT_FEATURES).name)
  utils.add_mixture("demo_bilingual_lang_task_sentiment_zeroshot",
                    [(sentiment_a, float(len(lm))), *((t, 1.0) for t in lm), (sentiment_b, 1.0)])


register()
