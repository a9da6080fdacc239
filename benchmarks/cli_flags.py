"""Flags and output shared by the benchmark scripts: the batch shape, and the optional JSON copy of a result."""
from __future__ import annotations

import argparse
import json
from typing import Any

from benchmarks.shapes import StepShape


def add_shape_flags(parser: argparse.ArgumentParser, batch: int = 8, input_length: int = 128,
                    target_length: int = 8, prompt_length: int = 100) -> None:
  """--batch, --input_length, --target_length, --prompt_length (defaults: the reference shape)."""
  parser.add_argument("--batch", type=int, default=batch)
  parser.add_argument("--input_length", type=int, default=input_length)
  parser.add_argument("--target_length", type=int, default=target_length)
  parser.add_argument("--prompt_length", type=int, default=prompt_length)


def shape_from_flags(args: argparse.Namespace) -> StepShape:
  return StepShape(args.batch, args.input_length, args.target_length, args.prompt_length)


def write_json(data: Any, path: str | None) -> None:
  """Write `data` to `path` (the scripts' --json flag); nothing when no path is given."""
  if path:
    with open(path, "w") as f:
      json.dump(data, f, indent=1, default=str)
