"""The model, the train step and the benchmark's step import without TensorFlow (only the data side needs it).

SeqIO imports TensorFlow (~0.45 GiB resident, seconds of import); a process that only builds and runs the model,
such as a benchmark worker or a server, should not pay for it.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEP_MODULES = ("prompt_tuning.models.t5", "prompt_tuning.prompts", "prompt_tuning.runtime.models",
                "prompt_tuning.runtime.trainer", "prompt_tuning.runtime.state_init", "benchmarks.jax_step")
HEAVY = ("tensorflow", "seqio", "tensorflow_datasets")


def _loaded_after_importing(modules: tuple[str, ...]) -> list[str]:
  code = ("import importlib, json, sys\n"
          "for m in sys.argv[1:]:\n  importlib.import_module(m)\n"
          f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code, *modules], cwd=ROOT, env=env, capture_output=True, text=True,
                       check=True, timeout=300)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_model_and_train_step_import_without_tensorflow():
  assert _loaded_after_importing(STEP_MODULES) == []


def test_the_check_sees_tensorflow_when_the_data_side_is_imported():
  """The negative control: importing the input pipeline does load SeqIO and TensorFlow."""
  assert set(_loaded_after_importing(("prompt_tuning.runtime.input_pipeline",))) >= {"tensorflow", "seqio"}
