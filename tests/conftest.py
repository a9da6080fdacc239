"""Shared pytest fixtures: the read-only reference artifacts in ../shared/data (skipped when absent)."""
from __future__ import annotations

import os
import pathlib
import sys
import tempfile
from typing import Iterator

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Python caches compiled bytecode (__pycache__) for every test process and CLI subprocess, even where the
# environment says not to (PYTHONDONTWRITEBYTECODE=1 on these machines, and `make` installs without byte-compiling):
# otherwise each process compiles TensorFlow, JAX and the rest from source again, ~12 CPU-s per process.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False
# JAX's persistent compilation cache, shared by the test workers and the CLI runs they start: the same tiny
# programs compile once per clone instead of once per test. A fresh clone starts with it empty.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO_ROOT / ".pytest_cache" / "jax_compilation_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
# The tests compile hundreds of tiny programs and run each a few times, so compiling dominates: XLA CPU's cheapest
# compile settings (LLVM at -O0 without its expensive passes, one codegen thread per program since two workers share
# the cores, the elemental emitters instead of the fusion emitters, least execution-time optimisation effort).
# tests/test_t5_model.py + test_families_deep.py + test_trainer.py, cold cache, -n 2: 141 s -> 62 s. XLA's HLO
# passes still run; results differ from the optimised build only by float32 rounding, within every tolerance.
os.environ["XLA_FLAGS"] = " ".join(filter(None, [
    os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true",
    "--xla_cpu_parallel_codegen_split_count=1", "--xla_cpu_use_fusion_emitters=false"]))
os.environ.setdefault("JAX_EXEC_TIME_OPTIMIZATION_EFFORT", "-1.0")
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _require(path: pathlib.Path) -> pathlib.Path:
  if not path.exists():
    pytest.skip(f"reference artifact {path} is absent (it lives in ../shared/data beside the repo)")
  return path


@pytest.fixture(scope="session", autouse=True)
def library_temporary_files_in_the_session_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
  """Libraries' own temporary files go into pytest's session folder (which pytest prunes), not /tmp: TFDS leaves
  an empty `/tmp/tmp*tfds` folder behind each time it looks for a dataset's info in its GCS bucket."""
  saved, tempfile.tempdir = tempfile.tempdir, str(tmp_path_factory.mktemp("tempfile"))
  yield
  tempfile.tempdir = saved


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """The ../shared/data folder; skips the test when it is not there."""
  return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def tiny_t5x_checkpoint(shared_data: pathlib.Path) -> pathlib.Path:
  """The real T5X native checkpoint of the tiny T5 1.1 (d 4, 2 heads of 2, MLP 8, 2+2 layers)."""
  return _require(shared_data / "t5x_tiny_checkpoint" / "checkpoint_3")


@pytest.fixture(scope="session")
def t5_vocab_path(shared_data: pathlib.Path) -> pathlib.Path:
  """The real T5 SentencePiece model (32,000 pieces; add 100 extra ids for the T5 vocabulary)."""
  return _require(shared_data / "t5_vocab" / "sentencepiece.model")


def pytest_configure(config: pytest.Config) -> None:
  config.addinivalue_line("markers", "slow: a test that takes a large share of the suite; it is scheduled first")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
  """Start the slowest tests first, so the workers do not end with one long test running alone."""
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)
