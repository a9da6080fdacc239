"""SPoT source tasks (Vu et al., ACL 2022); importing this module registers them.

SPoT trains one prompt on a source task and transfers it to a target task. These
tasks keep the dataset name as the first word of the inputs; each is registered
once, with the T5 vocabulary (no `mt5_`, `taskless_`, `task_index_` or
`_examples` versions). `{ver}` is the TFDS version without dots.

* GLUE (TFDS `glue/{name}:2.0.0`; T5's text, postprocessors and metrics):
  `spot_glue_{cola,sst2,mrpc,qqp,stsb,qnli,rte,wnli}_v200`;
  `spot_glue_mnli_train_v200` (train split only),
  `spot_glue_mnli_validation_{matched,mismatched}_v200` (their "validation"
  reads TFDS `validation_matched` / `validation_mismatched`) and the mixture
  `spot_glue_mnli_and_dev_v200` of those three.
  E.g. `"rte sentence1: <s1> sentence2: <s2>"` -> `"not_entailment"`.
* MRQA (TFDS `mrqa/{name}:1.0.0`, its own splits):
  `spot_mrqa_{squad,news_qa,trivia_qa,search_qa,hotpot_qa,natural_questions}_v100`:
  `"<name> question: <q> context: <c>"` (punctuation padded) -> first answer;
  SQuAD `em`/`f1` over all answers.
* NLI: `spot_anli_r{1,2,3}_v010` (`anli/r{n}:0.1.0`,
  `"anli_r1 hypothesis: <h> context: <c>"`), `spot_doc_nli_v100` (`doc_nli:1.0.0`,
  `"doc_nli hypothesis: <h> premise: <p>"`, not_entailment / entailment) and
  `spot_snli_v110` (`snli:1.1.0`, `"snli hypothesis: <h> premise: <p>"`). Targets
  are label names (`<unk>` for label -1); accuracy on the text.
* Sentiment: `spot_imdb_reviews_v100`, `spot_yelp_polarity_reviews_v020`
  (`"<name> text: <t>"` -> negative / positive) and `spot_sentiment140_v100`
  (polarity 0/2/4 -> negative / neutral / positive); accuracy on the text.
* Summarization: `spot_{aeslc_v100,billsum_v300,gigaword_v120,cnn_dailymail_v320,
  multi_news_v100,samsum_v100,newsroom_v100}`: `"<name> summarize: <source>"` ->
  summary; T5's ROUGE (rouge1, rouge2, rougeLsum). TFDS 4.9 builds cnn_dailymail
  only at 3.4.0 and multi_news at 2.1.0, so those two read data already prepared
  at 3.2.0 / 1.0.0.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import seqio
import tensorflow as tf

from prompt_tuning.data import features
from prompt_tuning.data import glue
from prompt_tuning.data import metrics
from prompt_tuning.data import preprocessors
from prompt_tuning.data import qa
from prompt_tuning.data import utils

T5_ONLY: Mapping[str, Mapping[str, seqio.Feature]] = {"": features.T5_FEATURES}
NLI_LABELS = ("entailment", "neutral", "contradiction")

GLUE_VERSION = "v200"
# GLUE without the test-only diagnostics (ax) and the MNLI sets (below).
GLUE_NAMES = tuple(n for n in glue.LABELS if n not in glue.TEST_ONLY and not n.startswith("mnli"))
# Task name part -> seqio splits of TFDS glue/mnli.
MNLI_SPLITS: Mapping[str, Sequence[str] | Mapping[str, str]] = {
    "mnli_train": ["train"],
    "mnli_validation_matched": {"validation": "validation_matched"},
    "mnli_validation_mismatched": {"validation": "validation_mismatched"},
}
MNLI_MIXTURE = f"spot_glue_mnli_and_dev_{GLUE_VERSION}"

MRQA_NAMES = ("squad", "news_qa", "trivia_qa", "search_qa", "hotpot_qa", "natural_questions")


@dataclasses.dataclass(frozen=True)
class Classification:
  """A TFDS text classification set: text fields, label names and label field."""
  tfds_name: str
  text_keys: Sequence[str]
  label_names: Sequence[str]
  label_key: str = "label"
  label_step: int = 1  # class id = label // label_step (sentiment140: 0/2/4)


NLI = {
    "anli_r1": Classification("anli/r1:0.1.0", ("hypothesis", "context"), NLI_LABELS),
    "anli_r2": Classification("anli/r2:0.1.0", ("hypothesis", "context"), NLI_LABELS),
    "anli_r3": Classification("anli/r3:0.1.0", ("hypothesis", "context"), NLI_LABELS),
    "doc_nli": Classification("doc_nli:1.0.0", ("hypothesis", "premise"),
                              ("not_entailment", "entailment")),
    "snli": Classification("snli:1.1.0", ("hypothesis", "premise"), NLI_LABELS),
}
SENTIMENT = {
    "imdb_reviews": Classification("imdb_reviews/plain_text:1.0.0", ("text",),
                                   ("negative", "positive")),
    "sentiment140": Classification("sentiment140:1.0.0", ("text",),
                                   ("negative", "neutral", "positive"),
                                   label_key="polarity", label_step=2),
    "yelp_polarity_reviews": Classification("yelp_polarity_reviews:0.2.0", ("text",),
                                            ("negative", "positive")),
}
# Name -> (TFDS name, source field, summary field).
SUMMARIZATION = {
    "aeslc": ("aeslc:1.0.0", "email_body", "subject_line"),
    "billsum": ("billsum:3.0.0", "text", "summary"),
    "gigaword": ("gigaword:1.2.0", "document", "summary"),
    "cnn_dailymail": ("cnn_dailymail:3.2.0", "article", "highlights"),
    "multi_news": ("multi_news:1.0.0", "document", "summary"),
    "samsum": ("samsum:1.0.0", "dialogue", "summary"),
    "newsroom": ("newsroom:1.0.0", "text", "summary"),
}


def version_tag(tfds_name: str) -> str:
  """`"anli/r1:0.1.0"` -> `"v010"`."""
  return "v" + tfds_name.rsplit(":", 1)[1].replace(".", "")


# ========== Text preprocessors ==========
@seqio.map_over_dataset
def classification_text(
    x: Mapping[str, tf.Tensor],
    task_name: str,
    text_keys: Sequence[str],
    label_names: Sequence[str],
    label_key: str = "label",
    label_step: int = 1,
) -> dict[str, tf.Tensor]:
  """`"<task> key1: v1 [key2: v2]"` (whitespace collapsed) -> label name, `<unk>` for -1."""
  parts = [task_name]
  for key in text_keys:
    parts += [f"{key}:", x[key]]
  label = x[label_key]
  if label.dtype == tf.string:
    label = tf.strings.to_number(label, tf.int64)
  if label_step != 1:
    label = tf.math.floordiv(label, label_step)  # -1 stays -1
  return {
      "inputs": preprocessors.join_collapsed(parts),
      "targets": preprocessors.label_text(label, label_names),
  }


@seqio.map_over_dataset
def summarization_text(
    x: Mapping[str, tf.Tensor], task_name: str, source_key: str, target_key: str,
    prefix: str = "summarize:",
) -> dict[str, tf.Tensor]:
  """`"<task> summarize: <source>"` (joined as is) -> the summary field."""
  return {
      "inputs": tf.strings.join([task_name, prefix, x[source_key]], separator=" "),
      "targets": x[target_key],
  }


@seqio.map_over_dataset
def prepend_text(x: Mapping[str, tf.Tensor], text: str, key: str = "inputs") -> dict[str, tf.Tensor]:
  """`x[key]` with `text` and a space in front (whitespace collapsed)."""
  out = dict(x)
  out[key] = preprocessors.join_collapsed([text, x[key]])
  return out


def mrqa_text(dataset: tf.data.Dataset, task_name: str) -> tf.data.Dataset:
  """MRQA in the SQuAD format with the task name first: `"<task> question: ... context: ..."`."""
  return prepend_text(preprocessors.mrqa_text(dataset), text=task_name)


# ========== Task families ==========
def glue_family(name: str, task: str | None = None, splits: Any = None) -> utils.TaskFamily:
  """GLUE `name` at TFDS 2.0.0 as `spot_glue_{task or name}_v200`, reading `splits`."""
  family = glue.task_family(name, GLUE_VERSION)
  if splits is not None:
    family = dataclasses.replace(family, source=seqio.TfdsDataSource(
        tfds_name=f"glue/{name}:{glue.VERSIONS[GLUE_VERSION]}", splits=splits))
  return dataclasses.replace(family, base=f"spot_glue_{task or name}_{GLUE_VERSION}")


def mrqa_family(name: str) -> utils.TaskFamily:
  """MRQA `name` (TFDS `mrqa/{name}:1.0.0`) with its task name in the inputs."""
  return qa.qa_family(f"spot_mrqa_{name}_v100",
                      seqio.TfdsDataSource(tfds_name=f"mrqa/{name}:1.0.0"),
                      functools.partial(mrqa_text, task_name=name), summary_name=name)


def classification_family(name: str, spec: Classification) -> utils.TaskFamily:
  """`spot_{name}_{ver}`: label names as targets, accuracy on the text."""
  return utils.TaskFamily(
      base=f"spot_{name}_{version_tag(spec.tfds_name)}",
      source=seqio.TfdsDataSource(tfds_name=spec.tfds_name),
      text_preprocessors=[functools.partial(
          classification_text, task_name=name, text_keys=tuple(spec.text_keys),
          label_names=tuple(spec.label_names), label_key=spec.label_key,
          label_step=spec.label_step)],
      metric_fns=[metrics.accuracy],
      summary_name=name,
      label_names=tuple(spec.label_names))


def summarization_family(name: str, tfds_name: str, source_key: str,
                         target_key: str) -> utils.TaskFamily:
  """`spot_{name}_{ver}`: `"<name> summarize: <source>"` -> summary, ROUGE."""
  return utils.TaskFamily(
      base=f"spot_{name}_{version_tag(tfds_name)}",
      source=seqio.TfdsDataSource(tfds_name=tfds_name),
      text_preprocessors=[functools.partial(
          summarization_text, task_name=name, source_key=source_key, target_key=target_key)],
      metric_fns=[metrics.rouge],
      summary_name=name)


def families() -> list[utils.TaskFamily]:
  """Every SPoT task, GLUE first."""
  out = [glue_family(name) for name in GLUE_NAMES]
  out += [glue_family("mnli", task, splits) for task, splits in MNLI_SPLITS.items()]
  out += [mrqa_family(name) for name in MRQA_NAMES]
  out += [classification_family(name, spec) for name, spec in {**NLI, **SENTIMENT}.items()]
  out += [summarization_family(name, *spec) for name, spec in SUMMARIZATION.items()]
  return out


def register() -> list[str]:
  """Registers every SPoT task and the MNLI mixture; returns the task names."""
  names = []
  for family in families():
    names += utils.register_task_family(family, variants=("",), suffixes=("",),
                                        model_to_features=T5_ONLY)
  utils.add_mixture(MNLI_MIXTURE,
                    [f"spot_glue_{task}_{GLUE_VERSION}" for task in MNLI_SPLITS],
                    default_rate=1.0)
  return names


TASK_NAMES = tuple(register())
