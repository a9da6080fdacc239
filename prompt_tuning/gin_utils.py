"""Gin plumbing shared by the CLIs: T5X's `--gin.NAME=VALUE` flags, search paths and clear config errors."""
from __future__ import annotations

import os
import pathlib
import re
from typing import Sequence

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


def write_operative_config(model_dir: str) -> None:
  """The operative config (what was actually used) as MODEL_DIR/config.gin."""
  from etils import epath
  path = epath.Path(model_dir)
  path.mkdir(parents=True, exist_ok=True)
  (path / "config.gin").write_text(gin.operative_config_str())
