"""Helpers for tests that drive the CLIs the way a user does (subprocess, gin flags)."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from prompt_tuning.models import EncoderDecoder, get_config
from prompt_tuning.runtime.checkpoints import save_t5x_checkpoint

TESTS_DIR = pathlib.Path(__file__).resolve().parent
BYTE_VOCAB_ROWS = 384  # seqio.ByteVocabulary (259 ids) rounded up to a multiple of 128
MODEL_FLAGS = ["--gin_file=models/t5_1_1_tiny_prompt.gin", "--gin_file=byte_vocab_tiny.gin",
               f"--gin_search_paths={TESTS_DIR / 'gin'}"]
TASK_FLAGS = ["--gin.MIXTURE_OR_TASK_NAME='cli_test_task'", "--gin.MIXTURE_OR_TASK_MODULE='cli_tasks'",
              "--gin.TASK_FEATURE_LENGTHS={'inputs': 12, 'targets': 4}"]


def write_tiny_t5x_checkpoint(model_dir: pathlib.Path, step: int = 3, seed: int = 0) -> pathlib.Path:
  """A T5X native checkpoint of a random tiny T5 1.1 with a byte-vocabulary table; returns checkpoint_<step>."""
  model = EncoderDecoder(get_config("tiny", vocab_size=BYTE_VOCAB_ROWS, dtype=jnp.float32))
  ones = jnp.ones((1, 4), jnp.int32)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(seed), ones, ones, ones)["params"])
  params = jax.tree_util.tree_map(np.asarray, params)
  return pathlib.Path(save_t5x_checkpoint(str(model_dir), step, params))


def cli_env() -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
             TF_CPP_MIN_LOG_LEVEL="2")
  return env


def cli_command(module: str, flags: Sequence[str]) -> list[str]:
  return [sys.executable, "-m", f"prompt_tuning.{module}", *flags]


def run_cli(module: str, flags: Sequence[str], cwd: pathlib.Path, timeout: int = 600,
            check: bool = True) -> subprocess.CompletedProcess:
  proc = subprocess.run(cli_command(module, flags), cwd=cwd, env=cli_env(), capture_output=True, text=True,
                        timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
  return proc
