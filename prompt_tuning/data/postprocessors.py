"""Postprocessors: decoded model text (or a target with its example) -> metric input.

seqio calls `postprocess_fn(text, example=<example dict>, is_target=<bool>)`;
strings inside `example` are bytes. The semantics follow the `t5` library:
any prediction outside the label set becomes -1 and so counts as wrong.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

PREDICTION = "prediction"
PREDICTION_TEXT = "prediction_pretokenized"
INPUT_TEXT = "inputs_pretokenized"
TARGET_TEXT = "targets_pretokenized"
CONTEXT_TEXT = "context"
QUESTION_TEXT = "question"
ANSWERS_TEXT = "answers"
SENTINEL = "<extra_id_0>"

_WSC_DETERMINERS = frozenset({
    "a", "an", "few", "her", "his", "each", "every", "many", "much", "my", "our", "some",
    "that", "the", "their", "these", "this", "those", "which", "whose", "your"})


def as_text(value: Any) -> str:
  """Decodes bytes (as found in seqio examples) to str; leaves str untouched."""
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def identity(output: Any, **unused_kwargs) -> Any:
  return output


def remove_sentinel(output: Any, *unused_args, sentinel: str = SENTINEL, **unused_kwargs) -> Any:
  """Drops a leading `<extra_id_0>` (and the spaces after it) from decoded text; other values pass through.

  The first step of the postprocessor of a task whose targets start with the sentinel (`_sentinel` tasks), so
  that metrics see the label alone.
  """
  text = as_text(output) if isinstance(output, bytes) else output
  if isinstance(text, str) and text.startswith(sentinel):
    return text[len(sentinel):].lstrip()
  return output


def string_to_float(string: str, default: float = -1.0, **unused_kwargs) -> float:
  """`float(string)`, or `default` when the text is not a number."""
  try:
    return float(string)
  except ValueError:
    return default


def string_label_to_class_id(
    string_label: str, label_classes: Sequence[str], default: int = -1, **unused_kwargs
) -> int:
  """The index of `string_label` in `label_classes`, or `default` (-1) if absent."""
  label_classes = list(label_classes)
  return label_classes.index(string_label) if string_label in label_classes else default


def multirc(string_label: str, example: Mapping[str, Any] | None = None,
            is_target: bool = False) -> dict[str, Any]:
  """`{"value": class id}`, plus the question id as `"group"` for targets."""
  result = {"value": string_label_to_class_id(string_label, ("False", "True"))}
  if is_target:
    result["group"] = example["idx/question"]
  return result


def record(answer: str, example: Mapping[str, Any] | None = None,
           is_target: bool = False) -> dict[str, Any]:
  """Predictions: `{"value": text}`; targets: all answers + the (passage, query) group."""
  if is_target:
    return {
        "value": [as_text(a) for a in example["answers"]],
        "group": (example["idx/passage"], example["idx/query"]),
    }
  return {"value": answer}


def qa(answer: str, example: Mapping[str, Any] | None = None,
       is_target: bool = False) -> Any:
  """Predictions stay text; targets become the list of every gold answer."""
  if is_target:
    return [as_text(a) for a in example[ANSWERS_TEXT]]
  return answer


def _wsc_words(text: Any) -> str:
  words = as_text(text).strip().lower().split(" ")
  return " ".join(w for w in words if w not in _WSC_DETERMINERS)


def wsc_simple(prediction: str, example: Mapping[str, Any] | None = None,
               is_target: bool = False) -> int:
  """1 if the predicted referent is the candidate referent of the example, else 0.

  Case and determiners are ignored, and either word set may contain the other
  ("fuzzy bunny" vs "bunny"), unless only one side is possessive. An empty
  prediction gives -1 so it never matches a label. Targets are the 0/1 label.
  """
  if is_target:
    return example["label"]
  predicted = _wsc_words(prediction)
  if not predicted:
    return -1
  referent = _wsc_words(example[TARGET_TEXT])
  if ("'" in predicted) != ("'" in referent):
    return 0
  predicted_words, referent_words = set(predicted.split(" ")), set(referent.split(" "))
  return int(predicted_words <= referent_words or referent_words <= predicted_words)


def rank_classification(score: Any, example: Mapping[str, Any] | None = None,
                        is_target: bool = False) -> Any:
  """Targets: `(idx, is_correct, weight, target length)`; scores pass through."""
  if is_target:
    return (tuple(int(i) for i in example["idx"]), bool(example["is_correct"]),
            float(example.get("weight", 1.0)), len(example["targets"]))
  return score


def postprocess_with_examples(
    postprocess_fn: Callable[..., Any],
    decoded_model_output: Any,
    prediction_field: str = PREDICTION,
    prediction_text_field: str = PREDICTION_TEXT,
    example_fields: Sequence[str] = (INPUT_TEXT, TARGET_TEXT),
    decoded_model_output_field: str | None = None,
    **kwargs,
) -> Any:
  """Runs `postprocess_fn` and, for predictions, keeps the text around it.

  Targets (`is_target=True`) get plain `postprocess_fn(output, **kwargs)`.
  Predictions become `{prediction_field: postprocessed, prediction_text_field:
  raw text, <field>: example[field] for field in example_fields}`; a field
  missing from the example is looked up in the incoming dict (when chaining,
  with `decoded_model_output_field` naming the text inside it), else None.
  """
  if kwargs.get("is_target", False):
    return postprocess_fn(decoded_model_output, **kwargs)
  context: Mapping[str, Any] = {}
  if decoded_model_output_field is not None:
    context = decoded_model_output
    decoded_model_output = context[decoded_model_output_field]
  example = kwargs.get("example") or {}
  result = {
      prediction_field: postprocess_fn(decoded_model_output, **kwargs),
      prediction_text_field: decoded_model_output,
  }
  for field in example_fields:
    result[field] = example[field] if field in example else context.get(field)
  return result


def sequential(*fns: Callable[..., Any]) -> Callable[..., Any]:
  """Chains postprocessors: each gets the previous output and the same kwargs."""

  def run(output, *args, **kwargs):
    for fn in fns:
      output = fn(output, *args, **kwargs)
    return output

  return run


def qqp_to_mrpc(decoded_model_output: str, *unused_args, **unused_kwargs) -> str:
  """QQP label words -> MRPC's ("duplicate" -> "equivalent", also inside "not_...")."""
  return decoded_model_output.replace("duplicate", "equivalent")


def mrpc_to_qqp(decoded_model_output: str, *unused_args, **unused_kwargs) -> str:
  """MRPC label words -> QQP's ("equivalent" -> "duplicate")."""
  return decoded_model_output.replace("equivalent", "duplicate")
