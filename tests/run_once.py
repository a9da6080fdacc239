"""Expensive fixture results shared by the xdist workers of one test session."""
from __future__ import annotations

import fcntl
import json
import os
from typing import Any, Callable

import pytest


def once_per_run(tmp_path_factory: pytest.TempPathFactory, name: str, compute: Callable[[], Any]) -> Any:
  """`compute()`'s JSON result, computed by the first test process that asks and read by the others.

  A module-scoped fixture runs once per xdist worker that runs one of its tests, and the workers share the module's
  tests; this keeps an expensive fixture (a built wheel and its venv, say) to one run per session."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # the workers' temporary folders sit side by side in one folder of the session
  result = root / f"once_{name}.json"
  with open(root / f"once_{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # the others wait for the first to write its result
    if not result.exists():
      result.write_text(json.dumps(compute()))
    return json.loads(result.read_text())
