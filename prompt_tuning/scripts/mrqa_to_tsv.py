r"""Converts MRQA shared-task files (.jsonl or .jsonl.gz) to the TSV of `qa.register_mrqa_tsv_task`.

  python -m prompt_tuning.scripts.mrqa_to_tsv --input DROP.jsonl.gz --output DROP.tsv
  python -m prompt_tuning.scripts.mrqa_to_tsv --jsonl DROP.jsonl.gz   # writes DROP.tsv

Writes a header line, then one row per question: `id, context, question,
answer, answers` separated by tabs, `answers` joined by "|||" and `answer` the
first of them. Tabs and newlines inside the text become spaces.
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
from typing import Iterator, Sequence, TextIO

from prompt_tuning.data import preprocessors

ANSWER_DELIMITER = "|||"


def _clean(text: str) -> str:
  return re.sub(r"[\t\r\n]+", " ", text)


def mrqa_rows(lines: TextIO) -> Iterator[list[str]]:
  """TSV rows (as field lists) of an MRQA file; its `{"header": ...}` line is skipped."""
  for line in lines:
    record = json.loads(line)
    if "header" in record:
      continue
    context = _clean(record["context"])
    for qa in record["qas"]:
      answers = [_clean(a) for a in qa["answers"]]
      if not answers:
        raise ValueError(f"MRQA question {qa['qid']} has no answers; every MRQA question should.")
      yield [qa["qid"], context, _clean(qa["question"]), answers[0],
             ANSWER_DELIMITER.join(answers)]


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m prompt_tuning.scripts.mrqa_to_tsv",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--input", "--jsonl", dest="input", required=True,
                      help="MRQA .jsonl or .jsonl.gz file (--jsonl: the reference script's name)")
  parser.add_argument("--output", default=None, help="TSV file to write (default: the input's name, .tsv)")
  args = parser.parse_args(argv)
  args.output = args.output or re.sub(r"\.jsonl(\.gz)?$", "", args.input) + ".tsv"
  opener = gzip.open if args.input.endswith(".gz") else open
  with opener(args.input, "rt", encoding="utf-8") as source, \
      open(args.output, "w", encoding="utf-8") as sink:
    sink.write("\t".join(preprocessors.MRQA_TSV_FIELDS) + "\n")
    for row in mrqa_rows(source):
      sink.write("\t".join(row) + "\n")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
