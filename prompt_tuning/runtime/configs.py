"""Gin-configurable run settings with T5X's names (`utils.DatasetConfig`, `SaveCheckpointConfig`, ...)."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

# T5X gin files bind `utils.create_learning_rate_scheduler.*` (t5x.utils); our run gins import this module as
# `utils`, so the same bindings reach the scheduler (gin configures the function object, whatever its alias).
from prompt_tuning.gin_utils import ConfigError
from prompt_tuning.runtime.schedules import create_learning_rate_scheduler  # noqa: F401  pylint: disable=unused-import


@dataclasses.dataclass
class DatasetConfig:
  """Which SeqIO task or mixture to read and how (T5X `utils.DatasetConfig`)."""

  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int] | None
  split: str
  batch_size: int
  shuffle: bool = False
  seed: int | None = None
  use_cached: bool = False
  pack: bool = False
  module: str | None = None
  use_memory_cache: bool = True
  trim_output_features: bool = True
  # Few-shot training (runtime/few_shot.py): FEW_SHOT_K examples per class (or in all) of the split, chosen by
  # FEW_SHOT_SEED; None reads the whole split.
  few_shot_k: int | None = None
  few_shot_seed: int = 0
  few_shot_per_class: bool = True


@dataclasses.dataclass
class SaveCheckpointConfig:
  """When and what to save under MODEL_DIR (T5X `SaveCheckpointConfig`)."""

  period: int | None = 1000
  keep: int | None = None
  dtype: str = "float32"
  save_prompt_regexes: Sequence[str] | None = None  # also exported as numpy files; None: the family's exports
  use_async: bool = False

  def __post_init__(self):
    if self.dtype != "float32":
      raise ConfigError(f"SaveCheckpointConfig.dtype={self.dtype!r} is not supported: run checkpoints hold the "
                       "trained parameters and their optimizer state, which are kept in float32 so that a resumed "
                       "run is bit-identical. Leave dtype='float32'.")


@dataclasses.dataclass
class RestoreCheckpointConfig:
  """Where the frozen (and initial) weights come from (T5X `RestoreCheckpointConfig`).

  `assignment_map` holds `(regex, replacement-or-None)` pairs on '/'-joined parameter paths: None skips
  matching parameters (they keep their fresh initialisation, e.g. the prompt). `fallback_to_scratch` lets
  parameters missing from the checkpoint keep their initial values instead of raising.
  """

  path: str | None = None
  mode: str = "specific"
  dtype: str | None = "float32"
  assignment_map: Sequence[tuple[str, str | None]] = ()
  fallback_to_scratch: bool = False
  step: int | None = None


@dataclasses.dataclass
class CheckpointConfig:
  save: SaveCheckpointConfig | None = None
  restore: RestoreCheckpointConfig | None = None


def asdict(cfg: Any) -> dict[str, Any]:
  return dataclasses.asdict(cfg)
