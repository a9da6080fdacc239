r"""Prints registered task names, or a few formatted examples of one task.

  python -m prompt_tuning.scripts.show_tasks --list [--filter rte]
  python -m prompt_tuning.scripts.show_tasks --task taskless_super_glue_rte_v102 \
      [--split validation] [--num 3] [--tfds_data_dir DIR] [--vocab spm.model]

For a mixture, the examples of each of its tasks with that split are shown.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, Sequence

import numpy as np
import seqio

from prompt_tuning.data import tasks  # pylint: disable=unused-import
from prompt_tuning.data import vocab


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m prompt_tuning.scripts.show_tasks", description=__doc__.split("\n")[0])
  what = parser.add_mutually_exclusive_group(required=True)
  what.add_argument("--task", help="task or mixture name to show examples of")
  what.add_argument("--list", action="store_true", help="print registered task and mixture names")
  parser.add_argument("--filter", default="", help="with --list: only names containing this")
  parser.add_argument("--split", default="validation")
  parser.add_argument("--num", type=int, default=3, help="examples per task (default 3)")
  parser.add_argument("--tfds_data_dir", help="TFDS data directory to read from")
  parser.add_argument("--vocab", help="SentencePiece model to use instead of the gs:// T5 one")
  parser.add_argument("--module", action="append", default=[],
                      help="extra module to import that registers tasks (repeatable)")
  args = parser.parse_args(argv)
  if args.num < 1:
    parser.error(f"--num must be at least 1, got {args.num}")
  return args


def _format(value: Any) -> str:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray):
    return str([v.decode("utf-8") if isinstance(v, bytes) else v for v in value.tolist()])
  return str(value)


def _show(task: seqio.Task, split: str, num: int) -> None:
  print(f"== {task.name} [{split}] ==")
  dataset = task.get_dataset(sequence_length=None, split=split, shuffle=False,
                             try_in_mem_cache=False).take(num)
  for i, example in enumerate(dataset.as_numpy_iterator()):
    print(f"-- example {i}")
    for key, value in example.items():
      print(f"  {key}: {_format(value)}")


def main(argv: Sequence[str] | None = None) -> int:
  args = _parse(argv)
  for module in args.module:
    importlib.import_module(module)
  if args.vocab:
    vocab.set_vocab_path(args.vocab)
  if args.tfds_data_dir:
    seqio.set_tfds_data_dir_override(args.tfds_data_dir)
  if args.list:
    for kind, registry in (("task", seqio.TaskRegistry), ("mixture", seqio.MixtureRegistry)):
      for name in sorted(registry.names()):
        if args.filter in name:
          print(f"{kind}\t{name}")
    return 0
  if args.task in seqio.TaskRegistry.names():
    _show(seqio.TaskRegistry.get(args.task), args.split, args.num)
    return 0
  if args.task not in seqio.MixtureRegistry.names():
    print(f"No task or mixture named {args.task!r}; see --list.", file=sys.stderr)
    return 2
  for task in seqio.MixtureRegistry.get(args.task).tasks:
    if args.split in task.splits:
      _show(task, args.split, args.num)
    else:
      print(f"== {task.name} has no {args.split!r} split ==")
  return 0


if __name__ == "__main__":
  sys.exit(main())
