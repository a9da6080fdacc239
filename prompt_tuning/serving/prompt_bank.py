"""A bank of trained prompts `[T, P, d]` on one frozen model; each example uses the prompt its task id picks.

A bank named by task (a mapping task name -> prompt) serves a mixture: its family names the tasks
(`task_names`), so `eval` and `infer` give each example the id of its task (its position in the mapping) and one
batch can mix tasks. An unnamed bank (a list of prompts) holds the members of an ensemble (`serving.ensemble`).
Prompts come from `.npy` files or from checkpoints.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from prompt_tuning import prompts
from prompt_tuning.family import PROMPT_PATH

Array = jax.Array


def load_prompt(path: str, variable_path: str = PROMPT_PATH) -> Callable[[], np.ndarray]:
  """Lazily read one prompt `[P, d]`: a `.npy` file (any suffix), or `variable_path` of a checkpoint dir
  (`checkpoint_<step>` of a T5X or prompt-tuning run, or a model dir: its latest checkpoint)."""

  @functools.lru_cache(maxsize=1)
  def load() -> np.ndarray:
    if not epath.Path(path).is_dir():
      return prompts.np_load(path)()
    try:
      return np.asarray(prompts.t5x_load(path, variable_path)())
    except KeyError as e:
      raise ValueError(f"Checkpoint {path!r} has no variable {variable_path!r}; point to a prompt-tuning run's "
                       "checkpoint or pass the prompt's variable_path.") from e

  return load


def _materialise(name: str, source: Any) -> np.ndarray:
  value = source() if callable(source) else load_prompt(source)() if isinstance(source, str) else source
  value = np.asarray(value, np.float32)
  if value.ndim != 2:
    raise ValueError(f"Prompt {name} has shape {value.shape}; each prompt must be one [length, width] array.")
  return value


class PromptBank(nn.Module):
  """Fixed prompts `[T, P, d]` (parameter `prompts`); batch row b gets prompt `task_ids[b]`.

  `prompts` maps task names to prompts (a bank serving those tasks) or lists them (e.g. an ensemble's
  members); each prompt is a path (see `load_prompt`), an array or a zero-argument loader. An id outside
  [0, T) gives a NaN prompt rather than another task's.
  """

  prompts: Mapping[str, Any] | Sequence[Any]
  length: int
  dtype: Any = jnp.float32

  @property
  def task_names(self) -> tuple[str, ...]:
    return tuple(self.prompts) if isinstance(self.prompts, Mapping) else ()

  @property
  def num_prompts(self) -> int:
    return len(self.prompts)

  def setup(self):
    if not self.prompts:
      raise ValueError("PromptBank got no prompts; give a mapping task name -> prompt file, or a list of files.")
    self.bank = self.param("prompts", nn.with_logical_partitioning(self._load, (None,) + prompts.PROMPT_AXES))

  def _load(self, key: Array) -> Array:
    del key
    named = (self.prompts.items() if isinstance(self.prompts, Mapping)
             else ((f"#{i}", source) for i, source in enumerate(self.prompts)))
    values = [(str(name), _materialise(str(name), source)) for name, source in named]
    width = values[0][1].shape[1]
    for name, value in values:
      if value.shape != (self.length, width):
        raise ValueError(f"Prompt {name} of the bank has shape {value.shape}, but the bank holds prompts of "
                         f"PROMPT_LENGTH={self.length} rows and one width ({width}); set PROMPT_LENGTH="
                         f"{value.shape[0]} or use prompts trained with the same length on the same model.")
    return jnp.asarray(np.stack([value for _, value in values]))

  def all_prompts(self) -> Array:
    """The whole bank `[T, P, d]`."""
    return self.bank

  def __call__(self, tokens: Array, embedded: Array, task_ids: Array | None = None,
               **unused_prompt_inputs: Array) -> Array:
    """`[B, P, d]`: each row's prompt."""
    del tokens
    if self.bank.shape[-1] != embedded.shape[-1]:
      raise ValueError(f"The bank's prompts are {self.bank.shape[-1]} wide but the model is "
                       f"{embedded.shape[-1]} wide; use prompts trained on this model size.")
    if task_ids is None:
      if self.num_prompts > 1 and not self.is_initializing():
        raise ValueError(f"This PromptBank holds {self.num_prompts} prompts and needs `task_ids` (one per example): "
                         "serve tasks named in the bank, or use serving/ensemble.gin (PromptFamily.inference = "
                         "PromptEnsemble).")
      task_ids = jnp.zeros(embedded.shape[:1], jnp.int32)
    picked = jnp.take(self.bank, task_ids, axis=0, mode="fill", fill_value=jnp.nan)
    return picked.astype(self.dtype)


def task_names(prompts_by_task: Mapping[str, Any] | Sequence[Any]) -> tuple[str, ...]:
  """`PromptFamily.task_names` of a bank: its task names in order (a task's id is its position), or () for an
  unnamed bank (a list of prompts)."""
  return tuple(prompts_by_task) if isinstance(prompts_by_task, Mapping) else ()
