"""Layers point one way: the core (models/, runtime/ and the seam's modules) never imports an upper layer, and
each shared name is defined once."""
from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "prompt_tuning"
CORE = ("prompt_tuning.models", "prompt_tuning.runtime", "prompt_tuning.family", "prompt_tuning.prompts",
        "prompt_tuning.masks", "prompt_tuning.errors", "prompt_tuning.gin_files", "prompt_tuning.gin_utils")
UPPER = ("prompt_tuning.serving", "prompt_tuning.families", "prompt_tuning.baselines", "prompt_tuning.sweeps",
         "prompt_tuning.scripts", "prompt_tuning.export", "prompt_tuning.train", "prompt_tuning.eval",
         "prompt_tuning.infer")


def module_name(path: pathlib.Path, package: pathlib.Path = PACKAGE) -> str:
  parts = path.relative_to(package.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: pathlib.Path) -> set[str]:
  """Every module an `import` or `from ... import` names anywhere in the file (function-level imports too)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names.add(node.module)
      names.update(f"{node.module}.{alias.name}" for alias in node.names)
  return names


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
  return any(name == p or name.startswith(p + ".") for p in prefixes)


def upward_imports(package: pathlib.Path = PACKAGE) -> list[str]:
  found = []
  for path in sorted(package.rglob("*.py")):
    name = module_name(path, package)
    if _within(name, CORE):
      found += [f"{name} imports {other}" for other in sorted(imported(path)) if _within(other, UPPER)]
  return found


def test_the_core_imports_no_upper_layer():
  assert upward_imports() == []


def test_the_walk_finds_an_upward_import(tmp_path):
  """The negative control: a core module importing a family is reported."""
  bad = tmp_path / "prompt_tuning" / "runtime"
  bad.mkdir(parents=True)
  (bad / "leak.py").write_text("def f():\n  from prompt_tuning.families import deep\n")
  assert upward_imports(tmp_path / "prompt_tuning") == [
      "prompt_tuning.runtime.leak imports prompt_tuning.families",
      "prompt_tuning.runtime.leak imports prompt_tuning.families.deep"]


@pytest.mark.parametrize("literal", ['"task_ids"', '"encoder/prompt/prompt/prompt"', '".*/prompt/.*"'])
def test_shared_names_are_defined_once(literal):
  """The task-id feature, the prompt's path and the default trainable regex live in `prompt_tuning.family`."""
  holders = [module_name(p) for p in sorted(PACKAGE.rglob("*.py")) if literal in p.read_text()]
  assert holders == ["prompt_tuning.family"]


def test_user_errors_share_one_base_class():
  from prompt_tuning import errors, gin_utils
  from prompt_tuning.runtime import few_shot, input_pipeline
  from prompt_tuning.runtime.checkpoints import formats, restore
  from prompt_tuning.sweeps.spec import SpecError
  for error in (gin_utils.ConfigError, input_pipeline.UnknownTaskError, restore.ParamTreeMismatchError, SpecError,
                formats.CheckpointNotFoundError, formats.UnknownCheckpointFormatError, few_shot.FewShotError):
    assert issubclass(error, errors.UserError), error
