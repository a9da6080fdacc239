"""What the train / eval / infer CLIs share: T5X's flags, gin parsing, multi-host start-up, readable errors."""
from __future__ import annotations

import logging
import sys
from typing import Any, Callable, Sequence

import gin
import jax
from absl import app, flags

from prompt_tuning import gin_utils
from prompt_tuning.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [], "Gin files, parsed in order (later ones override).")
flags.DEFINE_multi_string("gin_bindings", [], "Individual gin bindings; `--gin.NAME=VALUE` is shorthand.")
flags.DEFINE_list("gin_search_paths", ["."], "Where to look for gin files (the shipped gin_configs/ is appended).")
flags.DEFINE_string("tfds_data_dir", None, "TFDS data dir override (seqio.set_tfds_data_dir_override).")
flags.DEFINE_boolean("multiprocess", False, "Initialise jax.distributed (multi-host GPU/CPU; automatic on TPU).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for jax.distributed.")
flags.DEFINE_integer("process_count", None, "Number of processes, for jax.distributed.")
flags.DEFINE_integer("process_index", None, "This process's index, for jax.distributed.")
flags.DEFINE_boolean("multiprocess_gpu", False, "T5X's name for --multiprocess.")
flags.DEFINE_integer("initialization_timeout", None, "Seconds jax.distributed waits for every process to join.")
flags.DEFINE_list("seqio_additional_cache_dirs", [], "More directories to search for cached SeqIO tasks.")


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
  """Parse gin from the flags, then call the gin-configured `fn(**overrides)`; config mistakes exit with one clear
  line. `overrides` are flags that stand for a binding (infer's `--shard_id`)."""
  del argv
  for handler in logging.getLogger().handlers:  # absl's handler exists once app.run has started
    handler.addFilter(_QuietLibraries())
  if FLAGS.tfds_data_dir or FLAGS.seqio_additional_cache_dirs:
    import seqio
    if FLAGS.tfds_data_dir:
      seqio.set_tfds_data_dir_override(FLAGS.tfds_data_dir)
    if FLAGS.seqio_additional_cache_dirs:
      seqio.add_global_cache_dirs(FLAGS.seqio_additional_cache_dirs)
  initialize_distributed()
  try:
    gin_utils.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths)
    return gin.get_configurable(fn)(**overrides)  # the run gin files bind it as `__main__.<fn>`, like T5X
  except (gin_utils.ConfigError, ValueError, FileNotFoundError, TypeError) as e:
    friendly = gin_utils.explain_missing(e) if isinstance(e, (ValueError, TypeError)) else None
    if friendly is None and not isinstance(e, UserError):
      raise
    message = str(friendly or e).split("\n  In call to configurable")[0].split("\n  In file ")[0]
    sys.exit(f"error: {' '.join(message.split())}")


class _QuietLibraries(logging.Filter):
  """Drop INFO chatter from Orbax and SeqIO internals so progress lines stay readable."""

  NOISY = ("/orbax/", "/seqio/dataset_providers.py", "/seqio/vocabularies.py", "/gin/resource_reader.py")

  def filter(self, record: logging.LogRecord) -> bool:
    if "/gin/resource_reader.py" in record.pathname:  # "Path not found" while trying each search path
      return False
    if "/orbax/" in record.pathname and "Metadata file does not exist" in record.getMessage():
      return False  # reading a run checkpoint's `state/` item, whose metadata Orbax keeps one level up
    return record.levelno >= logging.WARNING or not any(n in record.pathname for n in self.NOISY)


def start(main: Callable[[Sequence[str]], None]) -> None:
  """absl entry point with `--gin.NAME=VALUE` rewriting."""
  app.run(main, argv=gin_utils.rewrite_gin_args(sys.argv))
