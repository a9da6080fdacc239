"""Gin plumbing shared by the CLIs: T5X's `--gin.NAME=VALUE` flags, search paths and clear config errors."""
from __future__ import annotations

import os
import re
from typing import Sequence

import gin

from prompt_tuning import gin_files
from prompt_tuning.errors import UserError
from prompt_tuning.gin_files import default_search_paths


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
  """`--gin.NAME=VALUE` -> `--gin_bindings=NAME = VALUE` (T5X's shorthand)."""
  out = []
  for arg in argv:
    match = re.match(r"^--gin\.([^=]+)=(.*)$", arg, re.S)
    out.append(f"--gin_bindings={match.group(1)} = {match.group(2)}" if match else arg)
  return out


class ConfigError(UserError):
  """A gin configuration that cannot run; the message names what to set."""


def parse_gin(files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str] = ()) -> None:
  """Parse gin files (in order) and bindings after adding the search paths (ours appended)."""
  for path in list(search_paths) + default_search_paths():
    gin.add_config_file_search_path(os.path.abspath(path) if not str(path).startswith("gs://") else path)
  files = [gin_files.given_name(name) for name in files]
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
def check_bindings_are_used(files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str] = ()) -> None:
  """A macro that a binding sets (`--gin.NAME=...`) but the loaded gin files do not read is an error (T5X ignores
  it, so the setting silently has no effect): one nobody knows names the closest known macros (a misspelling);
  one that other gin files read (a training setting given to eval, `CLASS_LABELS` with a random initialiser)
  names them and the fix. Which macros the files read is `gin_files.macros`, what a sweep passes by too."""
  found = gin_files.macros(files, bindings, search_paths)
  if found is None:
    return  # a gin file that gin found elsewhere (a Python package's resource): nothing here can tell
  given = dict.fromkeys(name for binding in bindings for name in sorted(gin_files.scan(binding)[0].bound))
  unread = [name for name in given if name not in found.read]
  if not unread:
    return
  name, known = unread[0], gin_files.readers([*search_paths, *default_search_paths()])
  if name in known:
    raise _read_elsewhere(name, known[name])
  hint = gin_files.spelling_hint(name, (found.read | found.bound | set(known)) - set(unread))
  raise ConfigError(f"--gin.{name}=... sets a macro that no loaded gin file or configurable uses; {hint} "
                    "(T5X would ignore it and keep the default.)")


def _read_elsewhere(name: str, readers: Sequence[str]) -> ConfigError:
  """The error for a known macro that the loaded gin files do not read, naming (up to 3 of) those that do."""
  readers = sorted(readers, key=lambda path: not path.startswith(("models/", "runs/")))  # the model, run gins first
  shown = readers[:3] + ([f"{len(readers) - 3} more"] if len(readers) > 3 else [])
  fix = (f"it is read by {', '.join(shown)}: drop the binding, or add the --gin_file that reads it" if shown
         else "no gin file reads it: drop the binding")
  return ConfigError(f"--gin.{name}=... sets a macro that the gin files loaded here do not read; {fix}. (T5X would "
                     "ignore it.)")


def write_operative_config(model_dir: str) -> None:
  """The operative config (what was actually used) as MODEL_DIR/config.gin."""
  from etils import epath
  path = epath.Path(model_dir)
  path.mkdir(parents=True, exist_ok=True)
  (path / "config.gin").write_text(gin.operative_config_str())
