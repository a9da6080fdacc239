"""Cross-lingual tasks in mT5's text formats (XNLI and PAWS-X, zero-shot: train on English, evaluate every
language); importing this module registers them.

Registered with the mT5 vocabulary only (the `mt5_` prefix: the T5 vocabulary cannot spell most of these
languages), in the variants of `utils` (`""`, `taskless_`, `task_index_`; suffixes `_examples` and
`_rank_classification`):

* XNLI, 15 languages (`XNLI_LANGUAGES`):
  * `mt5_xnli_train`: English MultiNLI (TFDS `multi_nli:1.1.0`, train), "xnli: premise: <p> hypothesis: <h>"
    -> "0" / "1" / "2" (entailment, neutral, contradiction: mT5 writes the class id);
  * `mt5_xnli_dev_test.<lang>`: TFDS `xnli:1.1.0` validation and test, premise and hypothesis in `<lang>`;
  * `mt5_xnli_dev_test.all_langs`: every language, one after another;
  * mixture `mt5_xnli_zeroshot`: the English train task, `all_langs` and each language (mT5's).
* PAWS-X, 7 languages (`PAWSX_LANGUAGES`), TFDS `paws_x_wiki/<lang>:1.0.0`:
  * `mt5_paws`: English train, "paws sentence1: <s1> sentence2: <s2>" -> "different_meaning" / "paraphrase";
  * `mt5_pawsx_dev_test.<lang>`, `mt5_pawsx_dev_test.all_langs`, mixture `mt5_pawsx_zeroshot`.
* Factorised language x task prompts (`families/multilingual.gin`): `mt5_lang_task_index_<task>` is the
  taskless text with `<extra_id_l>` (the language, `LANG_INDEX`) then `<extra_id_t>` (the task, `TASK_INDEX`)
  before the tokens, for `xnli_train`, `xnli_dev_test.<lang>`, `paws`, `pawsx_dev_test.<lang>` and
  `mc4_span_corruption.<lang>` (T5's span corruption of TFDS `c4/multilingual:3.1.0` in `<lang>`, the signal
  that trains each language's prompt). Mixtures `mt5_lang_task_index_{xnli,pawsx}_zeroshot`: the English task
  (half the training examples), each evaluated language's mC4 (the other half), and each language's validation:
  the task prompt only ever trains on English, and evaluation swaps in each language's prompt.

Example: `mt5_taskless_xnli_dev_test.fr` ("premise: <fr> hypothesis: <fr>" -> "2").
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import seqio
import tensorflow as tf

from prompt_tuning.data import demo
from prompt_tuning.data import features
from prompt_tuning.data import metrics
from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import utils

XNLI_LANGUAGES = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")
PAWSX_LANGUAGES = ("de", "en", "es", "fr", "ja", "ko", "zh")
LANGUAGES = tuple(sorted(set(XNLI_LANGUAGES) | set(PAWSX_LANGUAGES)))
LANG_INDEX = {language: i for i, language in enumerate(LANGUAGES)}  # <extra_id_i> names language i
TASK_INDEX = utils.task_mapping(("mc4", "paws", "xnli"))
SOURCE_LANGUAGE = "en"
ALL_LANGS = "all_langs"

XNLI_LABELS = ("0", "1", "2")  # TFDS's class ids of entailment, neutral, contradiction, as mT5 writes them
PAWSX_LABELS = ("different_meaning", "paraphrase")
MODEL_TO_FEATURES = {"mt5_": features.MT5_FEATURES}
LANG_TASK_VARIANT = "lang_task_index_"
MC4_TFDS_NAME = "c4/multilingual:3.1.0"  # the version TFDS builds today (mT5 pretrained on 3.0.1)


def _class_id(labels: Sequence[str]) -> Callable[..., Any]:
  return functools.partial(postprocessors.string_label_to_class_id, label_classes=labels)


def _tfds_in_turn(names: Sequence[str]) -> Callable[..., tf.data.Dataset]:
  """A dataset function reading each TFDS dataset of `names` in turn (one per language)."""
  sources = [seqio.TfdsDataSource(tfds_name=name) for name in names]

  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    parts = [s.get_dataset(split=split, shuffle=shuffle_files, seed=seed) for s in sources]
    out = parts[0]
    for part in parts[1:]:
      out = out.concatenate(part)
    return out

  return dataset_fn


def xnli_families() -> list[utils.TaskFamily]:
  """`xnli_train` (English MultiNLI), `xnli_dev_test.<lang>` per language and `.all_langs`."""
  common = dict(postprocess_fn=_class_id(XNLI_LABELS), metric_fns=[metrics.accuracy], summary_name="xnli",
                task_index=TASK_INDEX["xnli"], label_names=XNLI_LABELS)
  train = utils.TaskFamily(base="xnli_train",
                           source=seqio.TfdsDataSource(tfds_name="multi_nli:1.1.0", splits=["train"]),
                           text_preprocessors=[preprocessors.mnli_as_xnli], **common)
  dev_test = seqio.TfdsDataSource(tfds_name="xnli:1.1.0", splits=["validation", "test"])
  per_language = [
      utils.TaskFamily(base=f"xnli_dev_test.{name}", source=dev_test,
                       text_preprocessors=[functools.partial(preprocessors.xnli_text, languages=languages)],
                       **common)
      for name, languages in (*((l, [l]) for l in XNLI_LANGUAGES), (ALL_LANGS, XNLI_LANGUAGES))]
  return [train, *per_language]


def pawsx_families() -> list[utils.TaskFamily]:
  """`paws` (English train), `pawsx_dev_test.<lang>` per language and `.all_langs`."""
  text = [functools.partial(preprocessors.glue_text, benchmark_name="paws", label_names=PAWSX_LABELS,
                            feature_names=("sentence1", "sentence2"), id_key=None)]
  common = dict(text_preprocessors=text, postprocess_fn=_class_id(PAWSX_LABELS), metric_fns=[metrics.accuracy],
                summary_name="pawsx", task_index=TASK_INDEX["paws"], label_names=PAWSX_LABELS)
  names = {language: f"paws_x_wiki/{language}:1.0.0" for language in PAWSX_LANGUAGES}
  train = utils.TaskFamily(base="paws", source=seqio.TfdsDataSource(tfds_name=names[SOURCE_LANGUAGE],
                                                                     splits=["train"]), **common)
  per_language = [utils.TaskFamily(base=f"pawsx_dev_test.{language}",
                                   source=seqio.TfdsDataSource(tfds_name=name, splits=["validation", "test"]),
                                   **common)
                  for language, name in names.items()]
  all_langs = utils.TaskFamily(
      base=f"pawsx_dev_test.{ALL_LANGS}",
      source=seqio.FunctionDataSource(_tfds_in_turn(list(names.values())), splits=["validation", "test"]),
      **common)
  return [train, *per_language, all_langs]


def language_of(base: str) -> str:
  """The language of a task's examples: the suffix after the dot, English for the training tasks."""
  return base.rsplit(".", 1)[1] if "." in base else SOURCE_LANGUAGE


def _lang_task_steps(language: str, task: str) -> list[Callable[..., Any]]:
  return [functools.partial(preprocessors.add_language_and_task_sentinels, language=LANG_INDEX[language],
                            task=TASK_INDEX[task])]


def register_lang_task(family: utils.TaskFamily, task: str) -> str:
  """`mt5_lang_task_index_<base>`: the taskless text, then the language's and the task's sentinels."""
  name = f"mt5_{LANG_TASK_VARIANT}{family.base}"
  utils.add_task(name, source=family.source,
                 preprocessors=[*family.text_preprocessors, preprocessors.remove_first_text_token,
                                seqio.preprocessors.tokenize, *_lang_task_steps(language_of(family.base), task),
                                seqio.CacheDatasetPlaceholder(), seqio.preprocessors.append_eos_after_trim],
                 output_features=features.MT5_FEATURES, postprocess_fn=family.postprocess_fn,
                 metric_fns=list(family.metric_fns))
  return name


def register_mc4(language: str) -> str:
  """`mt5_lang_task_index_mc4_span_corruption.<lang>`: span corruption of mC4 in `language` (documents cut
  into pieces of the inputs length first), after the language's and the mc4 task's sentinels."""
  name = f"mt5_{LANG_TASK_VARIANT}mc4_span_corruption.{language}"
  utils.add_task(name, source=seqio.TfdsDataSource(
      tfds_name=MC4_TFDS_NAME, splits={"train": language, "validation": f"{language}-validation"}),
                 preprocessors=[functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
                                seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                                preprocessors.split_tokens, demo.span_corruption,
                                *_lang_task_steps(language, "mc4"), seqio.preprocessors.append_eos_after_trim],
                 output_features=features.MT5_FEATURES, metric_fns=[])
  return name


def _zeroshot_mixtures(name: str, families: Sequence[utils.TaskFamily], task: str,
                       languages: Sequence[str]) -> None:
  train, *evaluations = families
  for variant in utils.VARIANTS:
    for suffix in ("", utils.EXAMPLES):
      utils.add_mixture(f"mt5_{variant}{name}_zeroshot{suffix}",
                        [f"mt5_{variant}{f.base}{suffix}" for f in (train, evaluations[-1], *evaluations[:-1])],
                        default_rate=1.0)
  lm = [register_mc4(language) for language in languages]
  utils.add_mixture(f"mt5_{LANG_TASK_VARIANT}{name}_zeroshot",
                    [(register_lang_task(train, task), float(len(lm))), *((t, 1.0) for t in lm),
                     *((register_lang_task(f, task), 1.0) for f in evaluations[:-1])])


def register() -> None:
  """Registers every XNLI and PAWS-X task and mixture (replacing older registrations); reads no data."""
  for name, families, task, languages in (("xnli", xnli_families(), "xnli", XNLI_LANGUAGES),
                                          ("pawsx", pawsx_families(), "paws", PAWSX_LANGUAGES)):
    for family in families:
      utils.register_task_family(family, model_to_features=MODEL_TO_FEATURES)
      utils.register_task_family(family, suffixes=(utils.RANK_CLASSIFICATION,), model_to_features=MODEL_TO_FEATURES)
    _zeroshot_mixtures(name, families, task, languages)


register()
