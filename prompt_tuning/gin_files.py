"""Which gin files a command loads and which macros they read, with the standard library alone (no gin, no JAX),
so that the CLIs' check of `--gin.NAME=...` and a sweep's choice of the bindings each command gets (even a
`--dry-run` from a bare install) agree by construction.

A macro is *read* when some statement of the loaded files (their includes followed the way gin follows them: the
working folder, then the search paths) or of the bindings references it as `%NAME`, as gin's own parser sees
it: comments and strings are skipped."""
from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import io
import itertools
import os
import pathlib
import re
import tokenize
from typing import Iterable, Sequence

PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
_MACRO_NAME = re.compile(r"[A-Za-z_]\w*")  # a binding of this key (no scope, no parameter) sets a macro
_MAX_GIN_FILES = 2000  # per search path, when listing every known macro
_NOT_GIN = (tokenize.TokenError, SyntaxError, ValueError)  # what `scan` (or reading the text) raises on other text
# The reference repository's gin paths (its README and demo scripts) -> ours.
_REFERENCE_PREFIXES = (("prompt_tuning/configs/models/decoding/", "decoding/"), ("prompt_tuning/configs/", ""),
                       ("models/decoding/", "decoding/"))


def default_search_paths() -> list[str]:
  """The shipped `gin_configs/` (inside the wheel, or at the repo root in a source checkout) and the cwd."""
  candidates = [PACKAGE_DIR / "gin_configs", PACKAGE_DIR.parent / "gin_configs"]
  return ["."] + [str(p) for p in candidates if p.is_dir()]


def resolve_reference_path(name: str) -> str:
  """`prompt_tuning/configs/models/t5_1_1_base_prompt.gin` (google-research/prompt-tuning's layout) ->
  `models/t5_1_1_base_prompt.gin`, so that the reference's commands run as written; other names are unchanged."""
  for prefix, replacement in _REFERENCE_PREFIXES:
    if name.startswith(prefix):
      return replacement + name[len(prefix):]
  return name


def given_name(name: str) -> str:
  """A gin file named on the command line: a path that exists, else in ours or the reference's layout."""
  return name if os.path.exists(name) else resolve_reference_path(name)


def is_macro(key: str) -> bool:
  """Whether a binding's key (`PROMPT_LENGTH`, not `utils.DatasetConfig.split`) names a macro."""
  return bool(_MACRO_NAME.fullmatch(key))


@dataclasses.dataclass(frozen=True)
class Macros:
  """The macros that gin text binds at its top level (`bound`) and references (`read`)."""

  bound: frozenset[str] = frozenset()
  read: frozenset[str] = frozenset()

  def __or__(self, other: "Macros") -> "Macros":
    return Macros(self.bound | other.bound, self.read | other.read)


def scan(text: str) -> tuple[Macros, tuple[str, ...]]:
  """The macros a gin text binds and reads, and the files it includes (in order)."""
  bound, read, includes = set(), set(), []
  depth, line = 0, []
  for token in tokenize.generate_tokens(io.StringIO(text).readline):
    if token.type in (tokenize.INDENT, tokenize.DEDENT):
      depth += 1 if token.type == tokenize.INDENT else -1
    elif token.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.ENDMARKER):
      line.append(token)
    elif line and token.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
      read.update(_references(line))
      if depth == 0 and len(line) >= 2 and line[0].type == tokenize.NAME:  # not in a `configurable:` block
        if line[1].string == "=":
          bound.add(line[0].string)
        elif line[0].string == "include" and line[1].type == tokenize.STRING:
          includes.append(ast.literal_eval(line[1].string))
      line = []
  return Macros(frozenset(bound), frozenset(read)), tuple(includes)


def _references(line: Sequence[tokenize.TokenInfo]) -> Iterable[str]:
  """`%NAME` (or `%scope/NAME`, `%gin.REQUIRED`) in one logical line's tokens."""
  for i, token in enumerate(line):
    if token.string != "%" or i + 1 >= len(line) or line[i + 1].type != tokenize.NAME:
      continue
    name, j = line[i + 1].string, i + 2
    while j + 1 < len(line) and line[j].string in (".", "/") and line[j + 1].type == tokenize.NAME:
      name, j = name + line[j].string + line[j + 1].string, j + 2
    yield name


def find(name: str, search_paths: Sequence[str] = (), top_level: bool = False) -> str | None:
  """The local file gin reads for `name` (a path, or one relative to the working folder or a search path, ours
  appended); a file given on the command line may use the reference repository's layout. None if none."""
  name = given_name(name) if top_level else name
  prefixes = [""]
  if not os.path.isabs(name):
    prefixes += [os.path.abspath(p) for p in [*search_paths, *default_search_paths()] if "://" not in str(p)]
  for prefix in prefixes:
    path = os.path.join(prefix, name)
    if os.path.isfile(path):
      return path
  return None


@functools.lru_cache(maxsize=None)
def _scan_file(path: str, mtime_ns: int) -> tuple[Macros, tuple[str, ...]]:
  del mtime_ns  # the cache key: an edited file is read again
  return scan(pathlib.Path(path).read_text())


def macros(files: Sequence[str], bindings: Sequence[str] = (), search_paths: Sequence[str] = ()) -> Macros | None:
  """The macros that the gin files (with what they include) and the bindings (`NAME = VALUE` lines) bind and
  read; None when a file is not on this machine (a gs:// search path) or is not gin: then nobody can tell (the
  CLI's own parse reports a file it cannot read)."""
  found, seen = Macros(), set()
  pending = [(name, True) for name in reversed(files)]
  while pending:
    name, top_level = pending.pop()
    path = find(name, search_paths, top_level)
    if path is None:
      return None
    if path in seen:
      continue
    seen.add(path)
    try:
      scanned, includes = _scan_file(path, os.stat(path).st_mtime_ns)
    except _NOT_GIN:
      return None
    found |= scanned
    pending.extend((include, False) for include in reversed(includes))
  return found | scan("\n".join(bindings))[0]


def spelling_hint(name: str, known: Iterable[str]) -> str:
  """`did you mean X or Y?` with the known macros closest to a misspelt `name`."""
  close = difflib.get_close_matches(name, sorted(set(known) - {name}), n=3, cutoff=0.6)
  return f"did you mean {' or '.join(close)}?" if close else "check its spelling against the gin files' macros."


def readers(search_paths: Iterable[str]) -> dict[str, list[str]]:
  """Every macro a gin file under the (local) search paths binds or reads, with the files that read it
  (relative to their search path): the names a user may mean, and where each is used."""
  out: dict[str, list[str]] = {}
  for root in dict.fromkeys(os.path.realpath(p) for p in search_paths if "://" not in str(p)):
    if root == os.path.realpath(os.getcwd()) or not os.path.isdir(root):
      continue  # the working folder may be anything (a home folder): its gin files in use are scanned already
    for path in itertools.islice(pathlib.Path(root).rglob("*.gin"), _MAX_GIN_FILES):
      try:
        scanned, _ = _scan_file(str(path), path.stat().st_mtime_ns)
      except _NOT_GIN:
        continue  # it names nothing a user means
      for name in scanned.bound:
        out.setdefault(name, [])
      for name in scanned.read:
        out.setdefault(name, []).append(str(path.relative_to(root)))
  return {name: sorted(paths) for name, paths in out.items()}
