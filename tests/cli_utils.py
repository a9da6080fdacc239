"""Helpers for tests that drive the CLIs the way a user does (`python -m prompt_tuning.<module> <flags>`).

`run_cli` runs the module as `python -m` would (`runpy` as `__main__`, the same argv, absl flags and gin parsed
afresh, the working directory and exit status of a real run) but inside the test process, so a call does not pay
for starting Python, TensorFlow and JAX again. `PT_TEST_CLI_SUBPROCESS=1` (or `in_process=False`) runs each CLI in
its own process instead, as a user's shell does. `PT_TEST_CLI_TIMES=FILE` appends each in-process run's module,
seconds and test to FILE (where the suite's CLI time goes).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import pathlib
import runpy
import signal
import subprocess
import sys
import time
import traceback
import warnings
from typing import Callable, Iterator, Sequence

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


def run_cli(module: str, flags: Sequence[str], cwd: pathlib.Path, timeout: int = 600, check: bool = True,
            in_process: bool = True) -> subprocess.CompletedProcess:
  """`python -m prompt_tuning.<module> <flags>` in `cwd`: its exit status, stdout and stderr (logs included)."""
  if not in_process or os.environ.get("PT_TEST_CLI_SUBPROCESS") == "1":
    proc = subprocess.run(cli_command(module, flags), cwd=cwd, env=cli_env(), capture_output=True, text=True,
                          timeout=timeout)
  else:
    proc = run_in_process(module, flags, cwd)
  if check and proc.returncode != 0:
    raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
  return proc


def kill_cli_when(module: str, flags: Sequence[str], cwd: pathlib.Path, ready: Callable[[], bool],
                  timeout: float = 300, poll_seconds: float = 0.01) -> None:
  """`python -m prompt_tuning.<module> <flags>` in its own process, killed with SIGKILL as soon as `ready()` (or
  when it ends or `timeout` passes); `ready` is asked every `poll_seconds`."""
  proc = subprocess.Popen(cli_command(module, flags), cwd=cwd, env=cli_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + timeout
  while not ready() and proc.poll() is None and time.time() < deadline:
    time.sleep(poll_seconds)
  proc.send_signal(signal.SIGKILL)
  proc.wait()


def tpu_dry_run(spec_path: str | pathlib.Path, output_dir: pathlib.Path, capsys) -> list[str]:
  """`python -m prompt_tuning.sweeps run SPEC --backend=tpu --dry-run`: the Cloud TPU command lines it prints."""
  from prompt_tuning.sweeps import cli as sweeps_cli  # pylint: disable=import-outside-toplevel
  assert sweeps_cli.main(["run", str(spec_path), "--backend=tpu", "--dry-run", "--output_dir", str(output_dir)]) == 0
  return capsys.readouterr().out.splitlines()


def run_sweep_command_in_process(command) -> int:
  """A runner for `sweeps.backends.run_local` (with `jobs=1`): each command runs in this process, its output in
  the run's `sweep.log` and its folder marked done, as the local backend does with a subprocess."""
  from prompt_tuning.sweeps import backends

  def execute(argv: list[str], log) -> int:
    module = argv[2][len("prompt_tuning."):]  # [python, -m, prompt_tuning.<module>, *flags]
    proc = run_in_process(module, argv[3:], pathlib.Path.cwd())
    log.write(proc.stdout + proc.stderr)
    return proc.returncode

  return backends.run_local_command(command, execute=execute)


def run_in_process(module: str, flags: Sequence[str], cwd: pathlib.Path) -> subprocess.CompletedProcess:
  """The module run as `__main__` in this process, with a fresh gin config and fresh absl flags.

  Each run executes the module afresh, so gin's interactive mode lets its configurables (T5X's
  `import __main__ as train_script`) replace those of the previous run, as a new process would."""
  import gin
  start = time.perf_counter()
  argv = cli_command(module, flags)[2:]  # [module, *flags], as sys.argv of `python -m` but for argv[0]
  out, err = io.StringIO(), io.StringIO()
  code: int | str | None = 0
  gin.clear_config()
  _fresh_flags()
  with gin.config.interactive_mode(), _module_flags(argv[0]), _captured_logs(err), _cwd(cwd), \
      contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    saved_argv, sys.argv = sys.argv, list(argv)
    try:
      with warnings.catch_warnings():  # a test may have imported the module; `python -m` would not have
        warnings.filterwarnings("ignore", message=".*found in sys.modules after import of package",
                                category=RuntimeWarning)
        runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
    except SystemExit as e:
      code = e.code
    except BaseException:  # pylint: disable=broad-except  # a crash: the traceback a shell would show
      traceback.print_exc()
      code = 1
    finally:
      sys.argv = saved_argv
      gin.clear_config()
  if os.environ.get("PT_TEST_CLI_TIMES"):
    with open(os.environ["PT_TEST_CLI_TIMES"], "a") as f:
      f.write(f"{module} {time.perf_counter() - start:.2f} {os.environ.get('PYTEST_CURRENT_TEST', '').split(' ')[0]}\n")
  if isinstance(code, str):  # sys.exit("error: ...") prints the message and exits with 1
    err.write(code + "\n")
    code = 1
  return subprocess.CompletedProcess(argv, code or 0, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _module_flags(module: str) -> Iterator[None]:
  """The absl flags `module` defines come from its run as `__main__` alone: the definitions of an earlier import
  are set aside (absl would refuse them twice) and the run's removed afterwards, so either order works."""
  import importlib.util
  from absl import flags as absl_flags
  registry = absl_flags.FLAGS
  imported = list(registry.flags_by_module_dict().get(module, []))
  for flag in imported:
    delattr(registry, flag.name)
  as_main = importlib.util.find_spec(module).origin  # absl names `__main__`'s flags by sys.argv[0], its file
  try:
    yield
  finally:
    for flag in list(registry.flags_by_module_dict().get(as_main, [])):
      delattr(registry, flag.name)
    for flag in imported:
      registry[flag.name] = flag
      registry.register_flag_by_module(module, flag)


def _fresh_flags() -> None:
  """absl flags back to their defaults and logging at INFO, as `app.run` leaves them in a new process."""
  from absl import flags as absl_flags
  from absl import logging as absl_logging
  logging.disable(logging.INFO)  # unparse_flags logs that it ran
  absl_flags.FLAGS.unparse_flags()
  logging.disable(logging.NOTSET)
  absl_logging.set_verbosity(absl_logging.INFO)


@contextlib.contextmanager
def _cwd(path: pathlib.Path) -> Iterator[None]:
  saved = os.getcwd()
  os.chdir(path)
  try:
    yield
  finally:
    os.chdir(saved)


@contextlib.contextmanager
def _captured_logs(stream: io.StringIO) -> Iterator[None]:
  """absl's log handler (which `app.run` puts on the root logger) writes into `stream`, as into a CLI's stderr."""
  from absl import logging as absl_logging
  handler = absl_logging.get_absl_handler().python_handler
  root = logging.getLogger()
  saved_stream, saved_level = handler.setStream(stream), root.level
  try:
    yield
  finally:
    handler.setStream(saved_stream)
    root.setLevel(saved_level)
