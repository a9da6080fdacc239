"""Checkpoint readers and writers: T5X native (msgpack + zarr) and format detection."""

from prompt_tuning.runtime.checkpoints.formats import (
    CheckpointNotFoundError,
    UnknownCheckpointFormatError,
    all_steps,
    checkpoint_dir,
    detect_checkpoint_format,
    latest_step,
    resolve_checkpoint,
)
from prompt_tuning.runtime.checkpoints.t5x_native import (
    load_t5x_checkpoint,
    load_t5x_params,
    load_variable,
    resolve_tensorstore_path,
    save_t5x_checkpoint,
)

__all__ = [
    "CheckpointNotFoundError",
    "UnknownCheckpointFormatError",
    "all_steps",
    "checkpoint_dir",
    "detect_checkpoint_format",
    "latest_step",
    "load_t5x_checkpoint",
    "load_t5x_params",
    "load_variable",
    "resolve_checkpoint",
    "resolve_tensorstore_path",
    "save_t5x_checkpoint",
]
