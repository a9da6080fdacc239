"""What the train / eval / infer CLIs share: T5X's flags, gin parsing, checks before any work, multi-host start-up,
and errors as one line with an exit code a scheduler can read (`prompt_tuning/errors.py`)."""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys
from typing import Any, Callable, Iterator, NoReturn, Sequence

import gin
import jax
from absl import app, flags

from prompt_tuning import config_checks, errors, gin_utils
from prompt_tuning.errors import NonFiniteError, UserError

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [], "Gin files, parsed in order (later ones override).")
flags.DEFINE_multi_string("gin_bindings", [], "Individual gin bindings; `--gin.NAME=VALUE` is shorthand.")
flags.DEFINE_list("gin_search_paths", ["."], "Where to look for gin files (the shipped gin_configs/ is appended).")
flags.DEFINE_string("tfds_data_dir", None, "TFDS data dir override (seqio.set_tfds_data_dir_override).")
flags.DEFINE_boolean("multiprocess", False, "Initialise jax.distributed (multi-host GPU/CPU; automatic on TPU).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for jax.distributed.")
flags.DEFINE_integer("process_count", None, "Number of processes, for jax.distributed.", lower_bound=1)
flags.DEFINE_integer("process_index", None, "This process's index, for jax.distributed.", lower_bound=0)
flags.DEFINE_boolean("multiprocess_gpu", False, "T5X's name for --multiprocess.")
flags.DEFINE_integer("initialization_timeout", None, "Seconds jax.distributed waits for every process to join.",
                     lower_bound=1)
flags.DEFINE_list("seqio_additional_cache_dirs", [], "More directories to search for cached SeqIO tasks.")
flags.DEFINE_boolean("verbose", False, f"Print the traceback of a user error too (or set {errors.TRACEBACK_ENV}=1).")


def write_config(model_dir: str) -> None:
  if jax.process_index() == 0:
    gin_utils.write_operative_config(model_dir)


def initialize_distributed() -> None:
  """Start jax.distributed from the flags (or the environment / SLURM when flags are unset)."""
  if not (FLAGS.multiprocess or FLAGS.multiprocess_gpu or FLAGS.coordinator_address):
    return
  kwargs = {k: v for k, v in dict(coordinator_address=FLAGS.coordinator_address,
                                  num_processes=FLAGS.process_count,
                                  process_id=FLAGS.process_index,
                                  initialization_timeout=FLAGS.initialization_timeout).items() if v is not None}
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d, %d global devices", jax.process_index(), jax.process_count(),
               jax.device_count())


def run_gin_main(argv: Sequence[str], fn: Callable[..., Any], **overrides: Any) -> Any:
  """Parse gin from the flags, check the flags, macros, paths and files (`config_checks`), then call the
  gin-configured `fn(**overrides)`. A mistake exits with one line (`reported_errors`) before any work. `overrides`
  are flags that stand for a binding (infer's `--shard_id`)."""
  del argv
  for handler in logging.getLogger().handlers:  # absl's handler exists once app.run has started
    handler.addFilter(_QuietLibraries())
  with reported_errors():
    check_flags()
    if FLAGS.tfds_data_dir or FLAGS.seqio_additional_cache_dirs:
      import seqio
      if FLAGS.tfds_data_dir:
        seqio.set_tfds_data_dir_override(FLAGS.tfds_data_dir)
      if FLAGS.seqio_additional_cache_dirs:
        seqio.add_global_cache_dirs(FLAGS.seqio_additional_cache_dirs)
    gin_utils.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths)
    gin_utils.check_bindings_are_used(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths)
    config_checks.check_config()
  initialize_distributed()
  with reported_errors():
    return gin.get_configurable(fn)(**overrides)  # the run gin files bind it as `__main__.<fn>`, like T5X


def check_flags() -> None:
  """The shared flags' values: folders that exist, a coordinator as host:port, an index below the count."""
  for path in FLAGS.gin_search_paths:
    if path and "://" not in path and not os.path.isdir(path):
      raise UserError(f"--gin_search_paths={path!r} is not a folder; give folders that hold gin files "
                      "(comma-separated).")
  for name in ("tfds_data_dir", *(["seqio_additional_cache_dirs"] if FLAGS.seqio_additional_cache_dirs else [])):
    for path in (FLAGS[name].value if isinstance(FLAGS[name].value, list) else [FLAGS[name].value]):
      if path and "://" not in path and not os.path.isdir(path):
        what = "a file" if os.path.exists(path) else "missing"
        raise UserError(f"--{name}={path!r} is {what}; give the folder that holds the prepared data.")
  if FLAGS.coordinator_address and not re.fullmatch(r"[^\s:]+:\d+", FLAGS.coordinator_address):
    raise UserError(f"--coordinator_address={FLAGS.coordinator_address!r} is not host:port; e.g. "
                    "--coordinator_address=10.0.0.2:1234.")
  if FLAGS.process_count is not None and FLAGS.process_index is not None \
      and FLAGS.process_index >= FLAGS.process_count:
    raise UserError(f"--process_index={FLAGS.process_index} must be below --process_count={FLAGS.process_count} "
                    "(processes count from 0).")


def exit_with(error: BaseException | str, code: int) -> NoReturn:
  """One `error: ...` line on stderr (after the traceback with --verbose / PT_TRACEBACK=1), then exit `code`."""
  message = str(error).split("\n  In call to configurable")[0].split("\n  In file ")[0]
  errors.exit_with(message, code, errors.traceback_wanted() or bool(FLAGS["verbose"].value))


# Mistakes of the machine's set-up rather than of the code: one line that says what to fix.
_FIXABLE_OS_ERRORS = {errno.ENOSPC: "free space on that disk or give a folder on another one",
                      errno.EDQUOT: "free space within the disk quota or give a folder on another disk",
                      errno.EROFS: "that file system is read-only: give a writable folder",
                      errno.EACCES: "fix the permissions or give a folder you can write to"}


@contextlib.contextmanager
def reported_errors() -> Iterator[None]:
  """User errors and the NaN/Inf stop as one line and their exit codes; anything else is a crash (traceback,
  exit code 1). Gin's 'required value' errors count as user errors."""
  try:
    yield
  except (UserError, NonFiniteError) as e:
    exit_with(e, e.exit_code)
  except OSError as e:
    if e.errno not in _FIXABLE_OS_ERRORS:
      raise
    exit_with(f"{e.strerror} ({e.filename or 'a file of the run'}): {_FIXABLE_OS_ERRORS[e.errno]}; a training run "
              "resumes from its last checkpoint when started again.", errors.EXIT_USER_ERROR)
  except (ValueError, TypeError) as e:
    friendly = gin_utils.explain_missing(e)
    if friendly is None:
      raise
    exit_with(friendly, errors.EXIT_USER_ERROR)


class _QuietLibraries(logging.Filter):
  """Drop INFO chatter from Orbax and SeqIO internals so progress lines stay readable."""

  NOISY = ("/orbax/", "/seqio/dataset_providers.py", "/seqio/vocabularies.py", "/gin/resource_reader.py")

  def filter(self, record: logging.LogRecord) -> bool:
    if "/gin/resource_reader.py" in record.pathname:  # "Path not found" while trying each search path
      return False
    if "/orbax/" in record.pathname and "Metadata file does not exist" in record.getMessage():
      return False  # reading a run checkpoint's `state/` item, whose metadata Orbax keeps one level up
    return record.levelno >= logging.WARNING or not any(n in record.pathname for n in self.NOISY)


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing, with a bad or unknown flag reported as a user error (absl itself exits 1)."""
  try:
    return FLAGS(list(argv))
  except flags.Error as e:
    print(errors.one_line(f"{e}; `--helpfull` lists the flags."), file=sys.stderr, flush=True)
    sys.exit(errors.EXIT_USER_ERROR)


def start(main: Callable[[Sequence[str]], None]) -> None:
  """absl entry point with `--gin.NAME=VALUE` rewriting."""
  app.run(main, argv=gin_utils.rewrite_gin_args(sys.argv), flags_parser=parse_flags)
