r"""Print the directory a Python module is installed in (the reference's `find_module`), e.g. for gin search paths.

  DIR="$(python -m prompt_tuning.scripts.find_module prompt_tuning)"
  python -m prompt_tuning.train --gin_search_paths="$DIR/gin_configs" ...

Our own gin files are always on the search path; this helps a user add another installed package's configs.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Sequence

from prompt_tuning import errors


def module_dir(name: str) -> str:
  """The absolute directory of module `name` (a package's own folder)."""
  module = importlib.import_module(name)
  if getattr(module, "__file__", None) is None:
    raise ValueError(f"Module {name!r} has no file (a namespace package or a built-in); name a package inside it.")
  return os.path.dirname(os.path.abspath(module.__file__))


def main(argv: Sequence[str] | None = None) -> None:
  args = list(sys.argv[1:] if argv is None else argv)
  if len(args) != 1:
    sys.exit("usage: python -m prompt_tuning.scripts.find_module MODULE  (e.g. prompt_tuning)")
  with errors.user_errors(ImportError, ValueError):
    print(module_dir(args[0]))


if __name__ == "__main__":
  main()
