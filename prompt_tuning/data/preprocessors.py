"""TF preprocessors that turn raw TFDS / TSV examples into T5's text formats.

The text preprocessors reproduce the strings of the `t5` library's tasks
(GLUE/SuperGLUE `glue`, `stsb`, `record`, `wsc_simple`, DPR, SQuAD) so that
prompts trained here see exactly the inputs T5 was fine-tuned and evaluated on.
The token preprocessors run after `seqio.preprocessors.tokenize`.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import seqio
import tensorflow as tf

from prompt_tuning.family import TASK_IDS

AUTOTUNE = tf.data.AUTOTUNE
UNKNOWN_LABEL = "<unk>"


# ========== Helpers ==========
def pad_punctuation(text: tf.Tensor) -> tf.Tensor:
  """Surrounds every non-word character with spaces, then collapses whitespace."""
  text = tf.strings.regex_replace(text, r"(\W)", r" \1 ")
  return tf.strings.regex_replace(text, r"\s+", " ")


def join_collapsed(parts: Sequence[tf.Tensor | str]) -> tf.Tensor:
  """Joins with single spaces and collapses runs of whitespace (no strip)."""
  return tf.strings.regex_replace(tf.strings.join(parts, separator=" "), r"\s+", " ")


def label_text(label: tf.Tensor, label_names: Sequence[str]) -> tf.Tensor:
  """The class name of `label`, or "<unk>" for the unlabeled (-1) test examples."""
  return tf.gather([UNKNOWN_LABEL, *label_names], tf.cast(label, tf.int32) + 1)


# ========== GLUE / SuperGLUE ==========
@seqio.map_over_dataset
def glue_text(
    x: Mapping[str, tf.Tensor],
    benchmark_name: str,
    label_names: Sequence[str],
    feature_names: Sequence[str] | None = None,
    id_key: str | None = "idx",
) -> dict[str, tf.Tensor]:
  """`"<benchmark> key1: v1 key2: v2 ..."` -> label name (T5's `glue` format).

  Keys default to every feature except `label`/`idx`, sorted by name. MultiRC
  also drops its `<br>`/`<b>` markup and keeps its three-part index flattened.
  `id_key=None`: no `idx` is kept (datasets without one, e.g. PAWS-X).
  """
  keys = feature_names or sorted(set(x) - {"label", "idx"})
  parts = [benchmark_name]
  for key in keys:
    parts += [f"{key}:", x[key]]
  inputs = tf.strings.join(parts, separator=" ")
  out = {}
  if benchmark_name == "multirc":
    inputs = tf.strings.regex_replace(inputs, "<br>", " ")
    inputs = tf.strings.regex_replace(inputs, "<(/)?b>", "")
    for part in ("paragraph", "question", "answer"):
      out[f"idx/{part}"] = x["idx"][part]
  elif id_key:
    out["idx"] = x[id_key]
  out["inputs"] = inputs
  out["targets"] = label_text(x["label"], label_names)
  return out


@seqio.map_over_dataset
def stsb_text(x: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """STS-B as text: the score rounded (half to even) to the nearest 0.2, "%.1f"."""
  inputs = tf.strings.join(
      ["stsb sentence1:", x["sentence1"], "sentence2:", x["sentence2"]], separator=" ")
  targets = tf.as_string(tf.round(x["label"] * 5) / 5, precision=1)
  return {"inputs": inputs, "targets": targets, "idx": x["idx"]}


def record_text(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """ReCoRD: one example per gold answer (one "<unk>" example when there is none).

  `"record query: <q> entities: e1, e2 passage: <p>"`; each `\\n@highlight\\n` in
  the passage becomes ". ", or a single space right after punctuation.
  """

  def expand(x):
    answers = x["answers"]
    targets = tf.cond(
        tf.size(answers) > 0, lambda: answers, lambda: tf.constant([UNKNOWN_LABEL]))
    passage = tf.strings.regex_replace(x["passage"], "([.?!\"'])\n@highlight\n", r"\1 ")
    passage = tf.strings.regex_replace(passage, "\n@highlight\n", ". ")
    inputs = tf.strings.join(
        ["record query:", x["query"], "entities:",
         tf.strings.reduce_join(x["entities"], separator=", "), "passage:", passage],
        separator=" ")
    n = tf.size(targets)
    return {
        "idx/passage": tf.fill([n], x["idx"]["passage"]),
        "idx/query": tf.fill([n], x["idx"]["query"]),
        "inputs": tf.fill([n], inputs),
        "targets": targets,
        "answers": tf.tile(answers[tf.newaxis], [n, 1]),
    }

  return dataset.map(expand, num_parallel_calls=AUTOTUNE).unbatch()


# Two WSC texts whose pronoun index does not point at the pronoun itself; the
# blanked-out versions below are the ones T5 uses.
_WSC_BLANKED_TEXT_FIXES = {
    ("The boy continued to whip the pony , and eventually the pony threw him over. "
     "John laughed out quite loud. \"Good for him,\" he said. "):
        ("The boy continued to whip the pony , and eventually the pony threw him over. "
         "John laughed out quite loud. \"Good for X ,\" he said."),
    ("When they had eventually calmed down a bit , and had gotten home, Mr. Farley put "
     "the magic pebble in an iron safe . Some day they might want to use it , but "
     "really for now, what more could they wish for?"):
        ("When they had eventually calmed down a bit , and had gotten home, Mr. Farley put "
         "the magic pebble in an iron safe . Some day they might want to use X , but "
         "really for now, what more could they wish for?"),
}


def _wsc_blank_pronoun(x: Mapping[str, tf.Tensor]) -> tf.Tensor:
  """The WSC text with the word at `span2_index` (the pronoun) replaced by "X"."""
  words = tf.strings.split(x["text"], sep=" ")
  index = x["span2_index"]
  tf.debugging.assert_greater(index, 0, message="WSC pronoun must not be the first word")
  tf.debugging.assert_less(index, tf.size(words), message="WSC span2_index is past the text")

  def blank():
    tf.debugging.assert_equal(
        words[index], x["span2_text"], message="WSC word at span2_index is not span2_text")
    return tf.strings.join(
        [tf.strings.reduce_join(words[:index], separator=" "), "X",
         tf.strings.reduce_join(words[index + 1:], separator=" ")],
        separator=" ")

  known = tf.equal(list(_WSC_BLANKED_TEXT_FIXES), x["text"])
  return tf.cond(
      tf.reduce_any(known),
      lambda: tf.boolean_mask(list(_WSC_BLANKED_TEXT_FIXES.values()), known)[0],
      blank)


def wsc_simple_text(
    dataset: tf.data.Dataset, correct_referent_only: bool = False, label: str = "wsc:"
) -> tf.data.Dataset:
  """WSC as generation: `"wsc: ... *pronoun* ..."` -> the candidate referent text.

  The target is always `span1_text`, right or wrong; training therefore keeps only
  the examples whose referent is correct (`correct_referent_only=True`).
  """

  def to_text(x):
    marked = tf.strings.regex_replace(
        _wsc_blank_pronoun(x), " X ", " *" + x["span2_text"] + "* ")
    return {
        "inputs": tf.strings.join([label, marked], separator=" "),
        "targets": x["span1_text"],
        "label": x["label"],
        "idx": x["idx"],
    }

  if correct_referent_only:
    dataset = dataset.filter(lambda x: tf.equal(x["label"], 1))
  return dataset.map(to_text, num_parallel_calls=AUTOTUNE)


@seqio.map_over_dataset
def dpr_simple_text(x: Mapping[str, tf.Tensor], label: str = "wsc:") -> dict[str, tf.Tensor]:
  """Definite Pronoun Resolution as WSC-simple: the first pronoun match wrapped in `*`."""
  pattern = tf.strings.join([" (", x["pronoun"], r")( |\.|,)"])
  marked = tf.strings.regex_replace(x["sentence"], pattern, r" *\1*\2", replace_global=False)
  return {
      "inputs": tf.strings.join([label, marked], separator=" "),
      "targets": tf.gather(x["candidates"], x["label"]),
  }


# ========== Cross-lingual NLI (mT5's XNLI format) ==========
def _xnli_example(premise: tf.Tensor, hypothesis: tf.Tensor, label: tf.Tensor) -> dict[str, tf.Tensor]:
  # mT5 joins without collapsing whitespace and writes the class id itself as the target ("0", "1", "2").
  return {"inputs": tf.strings.join(["xnli: premise: ", premise, " hypothesis: ", hypothesis]),
          "targets": tf.strings.as_string(label)}


@seqio.map_over_dataset
def mnli_as_xnli(x: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """English MultiNLI in mT5's XNLI format: `"xnli: premise: <p> hypothesis: <h>"` -> `"0"` / `"1"` / `"2"`
  (entailment, neutral, contradiction)."""
  return _xnli_example(x["premise"], x["hypothesis"], x["label"])


def xnli_text(dataset: tf.data.Dataset, languages: Sequence[str]) -> tf.data.Dataset:
  """TFDS `xnli` in mT5's XNLI format, one language after another: each example's premise in that language
  with each of its hypotheses in that language (examples without one are dropped)."""

  def one_language(language: tf.Tensor) -> tf.data.Dataset:
    def expand(x):
      premises = x["premise"]
      codes = sorted(premises)
      premise = tf.boolean_mask(tf.stack([premises[c] for c in codes]), tf.equal(codes, language))[0]
      hypotheses = x["hypothesis"]
      chosen = tf.boolean_mask(hypotheses["translation"], tf.equal(hypotheses["language"], language))
      n = tf.size(chosen)
      return _xnli_example(tf.fill([n], premise), chosen, tf.fill([n], x["label"]))

    return dataset.map(expand, num_parallel_calls=AUTOTUNE).unbatch()

  return tf.data.Dataset.from_tensor_slices(list(languages)).flat_map(one_language)


# ========== Question answering ==========
def _qa_example(question, context, answers) -> dict[str, tf.Tensor]:
  question, context, answers = map(pad_punctuation, (question, context, answers))
  return {
      "inputs": join_collapsed(["question:", question, "context:", context]),
      "targets": answers[0],
      "question": question,
      "context": context,
      "answers": answers,
  }


@seqio.map_over_dataset
def squad_text(x: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """SQuAD: `"question: <q> context: <c>"` (punctuation padded) -> first answer."""
  return {"id": x["id"], **_qa_example(x["question"], x["context"], x["answers"]["text"])}


@seqio.map_over_dataset
def mrqa_text(x: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """TFDS MRQA in the SQuAD format; `idx` is the question id."""
  ex = _qa_example(x["question"], x["context"], x["answers"])
  return {"idx": x["qid"], "answer": ex["targets"], **ex}


MRQA_TSV_FIELDS = ("id", "context", "question", "answer", "answers")


@seqio.map_over_dataset
def tsv_to_qa(
    line: tf.Tensor,
    field_delim: str = "\t",
    answer_delim: str = "|||",
    field_names: Sequence[str] = MRQA_TSV_FIELDS,
) -> dict[str, tf.Tensor]:
  """A TSV line (`id, context, question, answer, answers`) in the SQuAD format.

  `answers` holds every gold answer joined by `answer_delim`; `answer` is the
  training target.
  """
  columns = tf.io.decode_csv(
      line, record_defaults=[""] * len(field_names), field_delim=field_delim,
      use_quote_delim=False)
  row = dict(zip(field_names, columns))
  ex = _qa_example(row["question"], row["context"],
                   tf.strings.split(row["answers"], sep=answer_delim))
  answer = pad_punctuation(row["answer"])
  return {**ex, "id": row["id"], "answer": answer, "targets": answer}


# ========== Variants ==========
@seqio.map_over_dataset
def remove_first_text_token(
    x: Mapping[str, tf.Tensor], key: str = "inputs"
) -> dict[str, tf.Tensor]:
  """Drops the text up to and including the first space (T5's leading task name)."""
  out = dict(x)
  out[key] = tf.strings.regex_replace(x[key], r"^[^ ]* ", "", replace_global=False)
  return out


def add_sentinel_to_beginning(
    dataset: tf.data.Dataset,
    output_features: Mapping[str, seqio.Feature],
    field: str = "inputs",
    offset: int = 0,
) -> tf.data.Dataset:
  """Prepends the token `<extra_id_{offset}>` (id `vocab_size - offset - 1`) to `field`.

  A token preprocessor: put it after `seqio.preprocessors.tokenize`.
  """
  token = output_features[field].vocabulary.vocab_size - (offset + 1)

  def prepend(x):
    out = dict(x)
    out[field] = tf.concat([tf.constant([token], dtype=x[field].dtype), x[field]], axis=0)
    return out

  return dataset.map(prepend, num_parallel_calls=AUTOTUNE)


def add_language_and_task_sentinels(
    dataset: tf.data.Dataset,
    output_features: Mapping[str, seqio.Feature],
    language: int,
    task: int,
) -> tf.data.Dataset:
  """Prepends `<extra_id_{language}>` then `<extra_id_{task}>` to `inputs`, for factorised multilingual prompts
  (`families/multilingual.gin`). A token preprocessor: put it after `seqio.preprocessors.tokenize`."""
  dataset = add_sentinel_to_beginning(dataset, output_features, offset=task)
  return add_sentinel_to_beginning(dataset, output_features, offset=language)


def add_target_sentinel(dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
  """Prepends `<extra_id_0>` to the tokenized `targets`, as T5's span-corruption targets begin (the paper's
  "span corruption + sentinel"). A token preprocessor; `postprocessors.remove_sentinel` undoes it on outputs."""
  return add_sentinel_to_beginning(dataset, output_features, field="targets", offset=0)


def rank_classification(
    dataset: tf.data.Dataset, label_names: Sequence[str]
) -> tf.data.Dataset:
  """One example per label for scoring: same `inputs`, `targets` = each label.

  Runs after a text preprocessor. Adds `is_correct` (the label equals the gold
  target text) and `idx = [example number, label number]`, as seqio's rank
  classification metric expects. Unlabeled examples get no correct label.
  """
  names = tf.constant(list(label_names))
  count = len(label_names)

  def expand(index, x):
    return {
        "idx": tf.stack([tf.fill([count], tf.cast(index, tf.int32)), tf.range(count)], axis=1),
        "inputs": tf.fill([count], x["inputs"]),
        "targets": names,
        "is_correct": tf.equal(names, x["targets"]),
    }

  return dataset.enumerate().map(expand, num_parallel_calls=AUTOTUNE).unbatch()


# ========== Pretraining objectives ==========
def split_tokens(dataset: tf.data.Dataset, sequence_length: Mapping[str, int] | None,
                 min_length: int = 2) -> tf.data.Dataset:
  """Cuts each tokenized `targets` into consecutive pieces of `sequence_length["inputs"] - 1` tokens (room for
  EOS), one example each, and drops pieces shorter than `min_length`. Without an inputs length (e.g. when
  examples are inspected with `sequence_length=None`) every document stays one piece."""
  length = (sequence_length or {}).get("inputs")

  def pieces(x):
    tokens = x["targets"]
    if length is None:
      rows = tokens[tf.newaxis]
    else:
      starts = tf.range(0, tf.size(tokens), length - 1)
      rows = tf.RaggedTensor.from_row_lengths(tokens, tf.minimum(length - 1, tf.size(tokens) - starts))
    return tf.data.Dataset.from_tensor_slices({"targets": rows})

  if length is not None and length < 3:
    raise ValueError(f"split_tokens needs an inputs length of at least 3 (2 tokens + EOS); got {length}.")
  return dataset.flat_map(pieces).filter(lambda x: tf.size(x["targets"]) >= min_length)


@seqio.map_over_dataset(num_seeds=1)
def prefix_lm_split(x: Mapping[str, tf.Tensor], seed: tf.Tensor) -> dict[str, tf.Tensor]:
  """T5's prefix-LM objective on the tokenized `targets`: cut at a uniform random point in [1, length - 1];
  inputs the start, targets the rest."""
  tokens = x["targets"]
  cut = tf.random.stateless_uniform([], seed, minval=1, maxval=tf.maximum(tf.size(tokens), 2), dtype=tf.int32)
  return {"inputs": tokens[:cut], "targets": tokens[cut:]}


# ========== Task ids as a feature ==========
TASK_IDS_FEATURE = seqio.Feature(seqio.PassThroughVocabulary(size=0), add_eos=False, required=False,
                                 dtype=tf.int32)  # the output feature `family.TASK_IDS` of such tasks


def add_task_ids(dataset: tf.data.Dataset, task_id: int) -> tf.data.Dataset:
  """Every example gets `task_ids = [task_id]` (declare `TASK_IDS_FEATURE` as the output feature
  `prompt_tuning.family.TASK_IDS` and give TASK_FEATURE_LENGTHS a `'task_ids': 1` entry)."""
  return dataset.map(lambda ex: {**ex, TASK_IDS: tf.constant([task_id], tf.int32)}, num_parallel_calls=AUTOTUNE)
