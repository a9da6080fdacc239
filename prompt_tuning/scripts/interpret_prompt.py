r"""Interpret a prompt as the paper's Section 7 does: the nearest vocabulary tokens of each prompt row.

  python -m prompt_tuning.scripts.interpret_prompt \
    --checkpoint=gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_base/checkpoint_1100000 \
    --prompt_path=MODEL_DIR/numpy_checkpoints/checkpoint_1130000/encoder.prompt.prompt.prompt \
    --class_labels=entailment,not_entailment [--k=5] [--vocab=t5|mt5|demo|PATH.model] [--output_json=PATH]

For each prompt row, its `k` nearest tokens by cosine similarity to the rows of the frozen model's embedding
table; the table's padding rows past the vocabulary (T5: ids 32,100 to 32,127) are left out. Tokens of a
class label (each label tokenized with the vocabulary; every sub-token counts) are marked `*`. The last line
is the share of rows whose `k` nearest tokens hold a class-label token.

The checkpoint is any format the package reads (T5X native, our Orbax runs, a Hugging Face T5 folder) or a
`.npy` table; the prompt is a `[length, d]` numpy file: a run's `numpy_checkpoints/checkpoint_<step>/` export
(with or without `.npy`) or a released prompt. `--vocab` is `t5` (PROMPT_TUNING_VOCAB, else T5's public
model), `mt5`, `demo` (the offline demo tasks) or a SentencePiece model file (with `--extra_ids`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from prompt_tuning import errors, prompts
from prompt_tuning.errors import UserError
from prompt_tuning.scripts.recycle_prompt import EMBEDDINGS_PATH, load_table


class InterpretError(UserError):
  """A prompt and a checkpoint (or labels) that cannot be compared; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class Neighbour:
  id: int
  token: str
  similarity: float
  class_label: bool


@dataclasses.dataclass(frozen=True)
class Report:
  """The neighbours of every prompt row and the class-label ids they were checked against."""

  k: int
  class_label_ids: Mapping[str, list[int]]
  rows: list[list[Neighbour]]

  @property
  def rows_with_label(self) -> int:
    return sum(any(n.class_label for n in row) for row in self.rows)

  @property
  def share_with_label(self) -> float:
    return self.rows_with_label / len(self.rows) if self.rows else 0.0

  def as_json(self) -> dict[str, Any]:
    return {"k": self.k, "class_label_ids": dict(self.class_label_ids),
            "rows": [[dataclasses.asdict(n) for n in row] for row in self.rows],
            "rows_with_class_label": self.rows_with_label, "share_with_class_label": self.share_with_label}


def load_vocabulary(name: str, extra_ids: int = 100) -> Any:
  """A seqio vocabulary: "t5", "mt5", "demo", or a SentencePiece model file with `extra_ids` sentinels."""
  import seqio  # pylint: disable=g-import-not-at-top  (TensorFlow)
  from prompt_tuning.data import vocab  # pylint: disable=g-import-not-at-top
  if name == "t5":
    return vocab.get_t5_vocabulary()
  if name == "mt5":
    return vocab.get_mt5_vocabulary()
  if name == "demo":
    from prompt_tuning.data import demo  # pylint: disable=g-import-not-at-top
    return demo.vocabulary()
  if not pathlib.Path(name).is_file() and "://" not in name:
    raise InterpretError(f"--vocab={name!r} is neither t5, mt5, demo nor a SentencePiece model file.")
  return seqio.SentencePieceVocabulary(name, extra_ids=extra_ids)


def token_text(vocabulary: Any, token_id: int) -> str:
  """The SentencePiece piece of `token_id` ("▁" marks a word start), else its decoded text."""
  tokenizer = getattr(vocabulary, "tokenizer", None)
  if tokenizer is not None:
    return tokenizer.id_to_piece(int(token_id))
  return vocabulary.decode([int(token_id)])


def nearest(prompt: np.ndarray, table: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """([rows, k] ids, [rows, k] cosine similarities) of the `k` table rows nearest each prompt row, nearest
  first (ties: the lower id first)."""
  def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

  similarity = unit(prompt) @ unit(table).T
  ids = np.argsort(-similarity, axis=-1, kind="stable")[:, :k]
  return ids, np.take_along_axis(similarity, ids, axis=-1)


def class_label_ids(vocabulary: Any, labels: Sequence[str]) -> dict[str, list[int]]:
  """Each label's token ids; a label that tokenizes to nothing or to the unknown token is refused."""
  out = {}
  unknown = getattr(vocabulary, "unk_id", None)
  for label in labels:
    ids = [int(i) for i in vocabulary.encode(label)]
    if not ids or unknown in ids:
      raise InterpretError(f"Class label {label!r} tokenizes to {ids or 'nothing'}, with no token of its own "
                           f"(unknown id {unknown}); give labels the vocabulary holds.")
    out[label] = ids
  return out


def interpret(prompt: np.ndarray, table: np.ndarray, vocabulary: Any, labels: Sequence[str] = (),
              k: int = 5) -> Report:
  """The `k` nearest vocabulary tokens of each row of `prompt` [length, d] in `table` [rows, d]."""
  if prompt.ndim != 2 or table.ndim != 2 or prompt.shape[1] != table.shape[1]:
    raise InterpretError(f"The prompt {prompt.shape} and the embedding table {table.shape} do not match: the "
                         "prompt must be [length, d] with the d of the table; pass the checkpoint the prompt was "
                         "trained on.")
  size = min(int(vocabulary.vocab_size), len(table))
  if not 1 <= k <= size:
    raise InterpretError(f"--k={k} must be between 1 and the vocabulary size ({size}).")
  label_ids = class_label_ids(vocabulary, labels)
  marked = {i for ids in label_ids.values() for i in ids}
  ids, similarity = nearest(prompt, table[:size], k)
  rows = [[Neighbour(int(i), token_text(vocabulary, i), float(s), int(i) in marked) for i, s in zip(row, sims)]
          for row, sims in zip(ids, similarity)]
  return Report(k, label_ids, rows)


def format_report(report: Report) -> str:
  lines = [f"class label {label!r}: ids {ids}" for label, ids in report.class_label_ids.items()]
  for i, row in enumerate(report.rows):
    cells = "  ".join(f"{n.token}{'*' if n.class_label else ''} ({n.similarity:.3f})" for n in row)
    lines.append(f"row {i:3d}: {cells}")
  lines.append(f"rows with a class label among their {report.k} nearest tokens: {report.rows_with_label}/"
               f"{len(report.rows)} ({100 * report.share_with_label:.1f}%)")
  return "\n".join(lines)


def _labels(values: Sequence[str] | None) -> list[str]:
  return [label for value in values or () for label in value.split(",") if label]


def main(argv: Sequence[str] | None = None) -> Report:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint", required=True, help="the frozen model the prompt was trained with")
  parser.add_argument("--prompt_path", required=True, help="a [length, d] numpy file")
  parser.add_argument("--class_labels", action="append", help="comma-separated label strings (repeatable)")
  parser.add_argument("--k", type=int, default=5, help="nearest tokens per row")
  parser.add_argument("--vocab", default="t5", help="t5, mt5, demo, or a SentencePiece model file")
  parser.add_argument("--extra_ids", type=int, default=100, help="sentinels added to a SentencePiece file")
  parser.add_argument("--embeddings_path", default=EMBEDDINGS_PATH)
  parser.add_argument("--output_json", default=None, help="also write the neighbours as JSON")
  args = parser.parse_args(argv)
  with errors.user_errors(KeyError, ValueError, FileNotFoundError):
    table = load_table(args.checkpoint, args.embeddings_path)
    prompt = np.asarray(prompts.np_load(args.prompt_path)(), np.float32)
    report = interpret(prompt, table, load_vocabulary(args.vocab, args.extra_ids), _labels(args.class_labels),
                       args.k)
  print(f"prompt {args.prompt_path} {prompt.shape}; embeddings of {args.checkpoint} {table.shape}")
  print(format_report(report))
  if args.output_json:
    pathlib.Path(args.output_json).write_text(json.dumps(report.as_json(), indent=1))
  return report


if __name__ == "__main__":
  main()
