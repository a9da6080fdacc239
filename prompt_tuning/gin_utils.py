"""Gin plumbing shared by the CLIs: T5X's `--gin.NAME=VALUE` flags, search paths and clear config errors."""
from __future__ import annotations

import difflib
import logging
import os
import pathlib
import re
from typing import Iterable, Sequence

import gin

from prompt_tuning.errors import UserError

PACKAGE_DIR = pathlib.Path(__file__).resolve().parent


def default_search_paths() -> list[str]:
  """The shipped `gin_configs/` (inside the wheel, or at the repo root in a source checkout) and the cwd."""
  candidates = [PACKAGE_DIR / "gin_configs", PACKAGE_DIR.parent / "gin_configs"]
  return ["."] + [str(p) for p in candidates if p.is_dir()]


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
  """`--gin.NAME=VALUE` -> `--gin_bindings=NAME = VALUE` (T5X's shorthand)."""
  out = []
  for arg in argv:
    match = re.match(r"^--gin\.([^=]+)=(.*)$", arg, re.S)
    out.append(f"--gin_bindings={match.group(1)} = {match.group(2)}" if match else arg)
  return out


class ConfigError(UserError):
  """A gin configuration that cannot run; the message names what to set."""


# The reference repository's gin paths (its README and demo scripts) -> ours.
_REFERENCE_PREFIXES = (("prompt_tuning/configs/models/decoding/", "decoding/"), ("prompt_tuning/configs/", ""),
                       ("models/decoding/", "decoding/"))


def resolve_reference_path(name: str) -> str:
  """`prompt_tuning/configs/models/t5_1_1_base_prompt.gin` (google-research/prompt-tuning's layout) ->
  `models/t5_1_1_base_prompt.gin`, so that the reference's commands run as written; other names are unchanged."""
  for prefix, replacement in _REFERENCE_PREFIXES:
    if name.startswith(prefix):
      return replacement + name[len(prefix):]
  return name


def parse_gin(files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str] = ()) -> None:
  """Parse gin files (in order) and bindings after adding the search paths (ours appended)."""
  for path in list(search_paths) + default_search_paths():
    gin.add_config_file_search_path(os.path.abspath(path) if not str(path).startswith("gs://") else path)
  files = [name if os.path.exists(name) else resolve_reference_path(name) for name in files]
  try:
    gin.parse_config_files_and_bindings(list(files), list(bindings), finalize_config=True)
  except IOError as e:
    raise ConfigError(f"{e}. Gin search paths: {list(search_paths) + default_search_paths()}; pass "
                      "--gin_search_paths or a path relative to one of them.") from e
  except (SyntaxError, ValueError) as e:
    raise explain_missing(e) or _parse_error(e) from e


def _parse_error(error: Exception) -> ConfigError:
  """Gin's parse error (bad syntax, an unknown configurable or parameter) as one line with the binding."""
  if isinstance(error, SyntaxError):
    where = f" {error.text.strip()!r}" if error.text else ""
    reason = [line.strip() for line in str(error.msg).splitlines() if line.strip()][-1:] or ["a syntax error"]
    return ConfigError(f"Gin cannot parse{where} ({reason[0]}): values are Python literals (strings need inner "
                       "quotes: --gin.MODEL_DIR=\"'/tmp/run'\"), @configurable() references or %MACROS.")
  message = str(error).split("\n  In ")[0]
  binding = re.search(r"In bindings string line \d+\n\s*(.*)", str(error))
  return ConfigError(f"{message}{f' (in {binding.group(1).strip()!r})' if binding else ''}; check the spelling "
                     "of the configurable and parameter names against the gin files.")


def explain_missing(error: Exception) -> ConfigError | None:
  """Turn gin's 'required value' errors into one naming the macro or binding to set."""
  text = str(error)
  macro = re.search(r"([\w.]+)/macro\.value set to `%gin\.REQUIRED` but not subsequently overridden", text)
  if macro:
    name = macro.group(1)
    return ConfigError(f"Missing required macro {name}: set it, e.g. --gin.{name}=... "
                       "(strings need inner quotes: --gin.MODEL_DIR=\"'/tmp/run'\").")
  match = re.search(r"Required bindings for `([\w.]+)` not provided in config: \[([^\]]*)\]", text)
  if match:
    names = [n.strip(" '\"") for n in match.group(2).split(",")]
    macros = ", ".join(n.upper() for n in names)
    return ConfigError(f"Missing required setting(s) {names} of `{match.group(1)}`: set the macro(s) {macros} "
                       f"with e.g. --gin.{names[0].upper()}=... or bind {match.group(1)}.{names[0]}.")
  return None


# ------------------------------------------------------------------------------------------------ unused macros
_MACRO_BINDING = re.compile(r"^\s*([A-Za-z_]\w*)\s*=", re.M)
_MACRO_REFERENCE = re.compile(r"%([A-Za-z_]\w*)")
_MAX_GIN_FILES = 2000  # per search path


def _config_macros() -> tuple[set[str], set[str]]:
  """(bound, referenced) macro names of the parsed gin config."""
  config = gin.config._CONFIG  # pylint: disable=protected-access  # gin has no public walk of its bindings
  bound = {scope for scope, selector in config if selector == "gin.macro"}
  referenced = {"/".join(ref.scopes) for ref in gin.config.iterate_references(config)
                if ref.configurable.wrapped is gin.config.macro}
  return bound, referenced


def macros_in_gin_files(search_paths: Iterable[str]) -> set[str]:
  """Every macro name bound or referenced by a gin file under the (local) search paths: the names a user may
  mean."""
  names: set[str] = set()
  for root in search_paths:
    if "://" in str(root) or os.path.abspath(root) == os.getcwd() or not os.path.isdir(root):
      continue  # the working folder may be anything (a home folder): its gin files in use are parsed already
    for i, path in enumerate(pathlib.Path(root).rglob("*.gin")):
      if i >= _MAX_GIN_FILES:
        break
      text = path.read_text(errors="replace")
      names.update(_MACRO_BINDING.findall(text), _MACRO_REFERENCE.findall(text))
  return names


def check_bindings_are_used(bindings: Sequence[str], search_paths: Sequence[str] = ()) -> None:
  """A macro that a binding sets (`--gin.NAME=...`) but no loaded gin file or configurable reads is an error
  naming the closest known macros (T5X ignores it, so a misspelled macro silently keeps its default). A macro
  that the shipped or searched gin files know but this configuration does not read (a training setting given to
  eval, a sweep's shared binding) only gets a warning."""
  bound, referenced = _config_macros()
  cli_macros = [m for binding in bindings for m in _MACRO_BINDING.findall(binding)]
  unused = [name for name in dict.fromkeys(cli_macros) if name not in referenced]
  if not unused:
    return
  known = macros_in_gin_files(list(search_paths) + default_search_paths())
  for name in unused:
    if name in known:
      logging.warning("--gin.%s is not read by the loaded gin files: it has no effect here.", name)
      continue
    candidates = sorted((referenced | bound | known) - set(unused))
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}?" if close else "check its spelling against the gin files' macros."
    raise ConfigError(f"--gin.{name}=... sets a macro that no loaded gin file or configurable uses; {hint} "
                      "(T5X would ignore it and keep the default.)")


def write_operative_config(model_dir: str) -> None:
  """The operative config (what was actually used) as MODEL_DIR/config.gin."""
  from etils import epath
  path = epath.Path(model_dir)
  path.mkdir(parents=True, exist_ok=True)
  (path / "config.gin").write_text(gin.operative_config_str())
