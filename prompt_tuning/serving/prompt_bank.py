"""A bank of trained prompts `[T, P, d]` on one frozen model; each example uses the prompt its task id picks.

A bank named by task (a mapping task name -> prompt) serves a mixture: `eval` and `infer` give each example the
id of its task (its position in the mapping), so one batch can mix tasks. An unnamed bank (a list of prompts)
holds the members of an ensemble (`serving.ensemble`). Prompts come from `.npy` files or from checkpoints.
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

Array = jax.Array
PROMPT_VARIABLE = "encoder/prompt/prompt/prompt"  # where a prompt-tuning run keeps its prompt
TASK_IDS = "task_ids"  # the batch feature (one of runtime.models.PROMPT_FEATURES) that selects a prompt


def load_prompt(path: str, variable_path: str = PROMPT_VARIABLE) -> Callable[[], np.ndarray]:
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
                         "serve tasks named in the bank, or wrap the model in serving.ensemble.PromptEnsembleModel.")
      task_ids = jnp.zeros(embedded.shape[:1], jnp.int32)
    picked = jnp.take(self.bank, task_ids, axis=0, mode="fill", fill_value=jnp.nan)
    return picked.astype(self.dtype)


def find_bank(module: Any) -> PromptBank | None:
  """The `PromptBank` that `module` (an `EncoderDecoder`) prompts its encoder with, or None."""
  factory = getattr(module, "prompt_factory", None)
  if factory is None:
    return None
  prompt = factory()
  prompt = getattr(prompt, "prompt", prompt)  # `PromptedInputs` wraps the prompt
  return prompt if isinstance(prompt, PromptBank) else None


def task_ids_of(module: Any) -> dict[str, int]:
  """{task name: task id} of the named bank `module` serves; {} without a bank or with an unnamed one."""
  bank = find_bank(module)
  return {name: i for i, name in enumerate(bank.task_names)} if bank is not None else {}


def task_id(task_name: str, task_ids: Mapping[str, int]) -> int:
  if task_name not in task_ids:
    raise ValueError(f"Task {task_name!r} has no prompt in the bank, which serves {list(task_ids)}; add it to "
                     "BANK_PROMPTS or leave it out of the mixture.")
  return task_ids[task_name]
