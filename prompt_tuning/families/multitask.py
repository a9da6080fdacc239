"""Multi-task prompts: a shared prompt plus task-specific parts, chosen per example by a task id.

* `MultiTaskPrompt(mode=...)` — the reference's modes: `shared_prompt` [P_s, H_s] and one flat vector per task
  in `task_prompts` [num_tasks, size] (the reference's `task_prompts/embedding`), combined by "add" (P x d
  each), "concat" (along length: P_s + P_t), "concat_features" (along features: H_s + H_t = d) or "project"
  (the task vector is an affine map [H_s x d] + [d] applied to every shared position).
* `MPTPrompt` — MPT (Wang et al. 2023, arXiv 2303.02861): shared prompt ⊙ a low-rank task matrix u_k v_kᵀ.
* `LanguageTaskPrompt` — factorised multilingual prompts: a language prompt then a task prompt, each looked up
  by its own sentinel.
* `MultiTaskInputs` — the `PROMPT_FACTORY` for these: reads task ids from the first input token (the
  reference's sentinel convention, task k = `<extra_id_k>` = id `vocab_size - 1 - k`, stripped before the
  prompt is prepended) or from the `task_ids` batch feature (the family's `batch_features`, filled by the
  `data.preprocessors.add_task_ids` preprocessor).
* MPT's source-training stage (distillation from single-task teacher prompts) is `families.distillation`.

An id outside [0, num_tasks) gives NaN prompts (so the loss becomes NaN and training stops) rather than a
silently wrong prompt.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import prompts
from prompt_tuning.family import MULTI_TASK_AXIS_RULES, PROMPT_AXIS_RULES

Array = jax.Array
Initializer = Callable[..., Array]
MODES = ("add", "concat", "concat_features", "project")
TASK_SOURCES = ("sentinel", "feature")
TASK_AXES = ("tasks", "prompt+embed")
LANG_AXES = ("langs", "prompt+embed")


def sentinel_to_task(token: Array, vocab_size: int) -> Array:
  """Task index of a sentinel token: `<extra_id_k>` (id `vocab_size - 1 - k`) -> k."""
  return vocab_size - 1 - token


def lookup(table: Array, task_ids: Array) -> Array:
  """Rows of `table` for each id; out-of-range ids give NaN rows."""
  return jnp.take(table, task_ids.astype(jnp.int32), axis=0, mode="fill", fill_value=jnp.nan)


def _identity_projection(shared_features: int, features: int) -> Initializer:
  """Each task's affine map starts as the identity (kernel eye, bias 0) plus a little noise."""

  def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
    eye = jnp.eye(shared_features, features, dtype=dtype).reshape(-1)
    base = jnp.concatenate([eye, jnp.zeros((features,), dtype)])
    return base[None] + 0.01 * jax.random.normal(key, shape, dtype)

  return init


class MultiTaskPrompt(nn.Module):
  """A shared prompt and per-task vectors, combined by `mode` (see the module docstring) -> [B, P, d].

  `shared_features` (H_s) defaults to d (d // 2 for "concat_features"); `task_length` (P_t, "concat")
  defaults to `shared_length`. `tasks_init` defaults to zeros ("add"), the identity map ("project") or
  `shared_init` (the concatenations).
  """

  shared_length: int = 10
  num_tasks: int = 8
  mode: str = "add"
  task_length: int | None = None
  shared_features: int | None = None
  shared_init: Initializer = prompts.random_uniform()
  tasks_init: Initializer | None = None
  dtype: Any = jnp.float32

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"Unknown multi-task mode {self.mode!r}; choose one of {MODES}.")
    if self.num_tasks <= 0 or self.shared_length <= 0:
      raise ValueError(f"num_tasks={self.num_tasks} and shared_length={self.shared_length} must be positive.")
    super().__post_init__()

  @property
  def length(self) -> int:
    return self.shared_length + ((self.task_length or self.shared_length) if self.mode == "concat" else 0)

  def _sizes(self, d: int) -> tuple[int, int]:
    """(H_s, flat size of one task vector)."""
    p = self.shared_length
    if self.mode == "add":
      return d, p * d
    if self.mode == "concat":
      return d, (self.task_length or p) * d
    if self.mode == "concat_features":
      hs = self.shared_features or d // 2
      if not 0 < hs < d:
        raise ValueError(f"concat_features needs 0 < shared_features < model width {d}; got {hs}.")
      return hs, p * (d - hs)
    hs = self.shared_features or d
    return hs, hs * d + d

  def _tasks_init(self, hs: int, d: int) -> Initializer:
    if self.tasks_init is not None:
      return self.tasks_init
    return {"add": nn.initializers.zeros, "project": _identity_projection(hs, d)}.get(self.mode, self.shared_init)

  @nn.compact
  def __call__(self, tokens: Array, embedded: Array, task_ids: Array | None = None, **unused: Any) -> Array:
    del tokens
    if task_ids is None:
      raise ValueError("MultiTaskPrompt needs task ids: wrap it in multitask.MultiTaskInputs (PROMPT_FACTORY).")
    d = embedded.shape[-1]
    hs, size = self._sizes(d)
    shared = self.param("shared_prompt", nn.with_logical_partitioning(self.shared_init, prompts.PROMPT_AXES),
                        (self.shared_length, hs), jnp.float32)
    table = self.param("task_prompts", nn.with_logical_partitioning(self._tasks_init(hs, d), TASK_AXES),
                       (self.num_tasks, size), jnp.float32)
    tasks = lookup(table, task_ids)  # [B, size]
    b, p = tasks.shape[0], self.shared_length
    shared_b = jnp.broadcast_to(shared[None], (b,) + shared.shape)
    if self.mode == "add":
      out = shared_b + tasks.reshape(b, p, d)
    elif self.mode == "concat":
      out = jnp.concatenate([shared_b, tasks.reshape(b, -1, d)], axis=1)
    elif self.mode == "concat_features":
      out = jnp.concatenate([shared_b, tasks.reshape(b, p, d - hs)], axis=2)
    else:
      kernel = tasks[:, :hs * d].reshape(b, hs, d)
      out = jnp.einsum("ph,bhd->bpd", shared, kernel) + tasks[:, hs * d:][:, None, :]
    return out.astype(self.dtype)


class MPTPrompt(nn.Module):
  """MPT: `shared_prompt` [P, d] ⊙ (u_k v_kᵀ) with `task_u` [T, P, r] and `task_v` [T, r, d].

  u and v start near 1/sqrt(r) (small noise breaks the symmetry between rank components), so every task
  starts from the shared prompt.
  """

  shared_length: int = 10
  num_tasks: int = 8
  rank: int = 1
  shared_init: Initializer = prompts.random_uniform()
  dtype: Any = jnp.float32

  @property
  def length(self) -> int:
    return self.shared_length

  @nn.compact
  def __call__(self, tokens: Array, embedded: Array, task_ids: Array | None = None, **unused: Any) -> Array:
    del tokens
    if task_ids is None:
      raise ValueError("MPTPrompt needs task ids: wrap it in multitask.MultiTaskInputs (PROMPT_FACTORY).")
    if self.rank <= 0:
      raise ValueError(f"MPTPrompt.rank={self.rank} must be positive.")
    d = embedded.shape[-1]
    near_one = lambda key, shape, dtype=jnp.float32: (1.0 + 0.02 * jax.random.normal(key, shape, dtype)) / np.sqrt(
        self.rank)
    shared = self.param("shared_prompt", nn.with_logical_partitioning(self.shared_init, prompts.PROMPT_AXES),
                        (self.shared_length, d), jnp.float32)
    u = self.param("task_u", nn.with_logical_partitioning(near_one, ("tasks", "prompt", None)),
                   (self.num_tasks, self.shared_length, self.rank), jnp.float32)
    v = self.param("task_v", nn.with_logical_partitioning(near_one, ("tasks", None, "prompt_embed")),
                   (self.num_tasks, self.rank, d), jnp.float32)
    w = jnp.einsum("bpr,brd->bpd", lookup(u, task_ids), lookup(v, task_ids))
    return (shared[None] * w).astype(self.dtype)


class LanguageTaskPrompt(nn.Module):
  """Factorised multilingual prompts (the reference's `extended/multitask_factorized_prompts`, as in Vu et al.
  2022, arXiv 2205.12647): the example's language prompt then its task prompt -> [B, P_l + P_t, d].

  `lang_prompts` [num_langs, P_l * d] and `task_prompts` [num_tasks, P_t * d] are looked up by the ids
  `MultiTaskInputs(lang_source="sentinel")` reads, so a language prompt learnt with one task serves the others.
  """

  lang_length: int = 50
  task_length: int = 50
  num_langs: int = 1
  num_tasks: int = 1
  langs_init: Initializer = prompts.random_uniform()
  tasks_init: Initializer = prompts.random_uniform()
  dtype: Any = jnp.float32

  def __post_init__(self):
    for name in ("lang_length", "task_length", "num_langs", "num_tasks"):
      if getattr(self, name) <= 0:
        raise ValueError(f"LanguageTaskPrompt.{name}={getattr(self, name)} must be positive.")
    super().__post_init__()

  @property
  def length(self) -> int:
    return self.lang_length + self.task_length

  @nn.compact
  def __call__(self, tokens: Array, embedded: Array, task_ids: Array | None = None, lang_ids: Array | None = None,
               **unused: Any) -> Array:
    del tokens
    if task_ids is None or lang_ids is None:
      raise ValueError("LanguageTaskPrompt needs language and task ids: wrap it in multitask.MultiTaskInputs with "
                       "lang_source='sentinel' (families/multilingual.gin).")
    d = embedded.shape[-1]
    langs = self.param("lang_prompts", nn.with_logical_partitioning(self.langs_init, LANG_AXES),
                       (self.num_langs, self.lang_length * d), jnp.float32)
    tasks = self.param("task_prompts", nn.with_logical_partitioning(self.tasks_init, TASK_AXES),
                       (self.num_tasks, self.task_length * d), jnp.float32)
    b = task_ids.shape[0]
    out = jnp.concatenate([lookup(langs, lang_ids).reshape(b, self.lang_length, d),
                           lookup(tasks, task_ids).reshape(b, self.task_length, d)], axis=1)
    return out.astype(self.dtype)


class MultiTaskInputs(nn.Module):
  """`encoder/prompt`: finds each example's task id, then prepends `prompt(tokens, embedded, task_ids=...)`.

  `task_source="sentinel"`: the id is `vocab_size - 1 - tokens[:, 0]` and that token is dropped (the
  encoder sees P + T - 1 positions). `"feature"`: the `task_ids` batch feature ([B] or [B, 1]).
  `lang_source="sentinel"` (factorised multilingual prompts): the first token is the language's sentinel, passed
  as `lang_ids`, and the task's sentinel (if `task_source="sentinel"`) comes second; both are dropped.
  """

  prompt: nn.Module
  task_source: str = "sentinel"
  vocab_size: int = 32100  # the vocabulary's size without padding rows (T5: 32,100), for sentinel ids
  combination: str = "prefix"  # fixed: the prompt always comes first
  lang_source: str | None = None

  def __post_init__(self):
    if self.task_source not in TASK_SOURCES:
      raise ValueError(f"Unknown task_source {self.task_source!r}; choose one of {TASK_SOURCES}.")
    if self.lang_source not in (None, "sentinel"):
      raise ValueError(f"Unknown lang_source {self.lang_source!r}; use 'sentinel' (the first input token) or None.")
    if self.combination != "prefix":
      raise ValueError("MultiTaskInputs only prepends its prompt (combination='prefix').")
    super().__post_init__()

  @property
  def length(self) -> int:
    return self.prompt.length

  @property
  def _id_tokens(self) -> int:
    """How many leading sentinel tokens carry ids (and are dropped)."""
    return (self.lang_source == "sentinel") + (self.task_source == "sentinel")

  def _task_ids(self, tokens: Array, task_ids: Array | None) -> Array:
    if self.task_source == "sentinel":
      return sentinel_to_task(tokens[:, self._id_tokens - 1], self.vocab_size)
    if task_ids is not None:
      return task_ids.reshape(tokens.shape[0])
    # Shape-only calls (parameter init, KV-cache set-up) carry no features; any real call must.
    if self.is_initializing() or self.is_mutable_collection("cache"):
      return jnp.zeros((tokens.shape[0],), jnp.int32)
    raise ValueError("task_source='feature' needs a `task_ids` feature in every batch: tasks preprocessed with "
                     "data.preprocessors.add_task_ids and 'task_ids': 1 in TASK_FEATURE_LENGTHS "
                     "(families/multitask.gin declares the feature).")

  def _strip(self, x: Array) -> Array:
    return x[:, self._id_tokens:]

  def __call__(self, tokens: Array, embedded: Array, task_ids: Array | None = None, **prompt_inputs: Array) -> Array:
    ids = self._task_ids(tokens, task_ids)
    if self.lang_source == "sentinel":
      prompt_inputs = {**prompt_inputs, "lang_ids": sentinel_to_task(tokens[:, 0], self.vocab_size)}
    tokens, embedded = self._strip(tokens), self._strip(embedded)
    prompt = self.prompt(tokens, embedded, task_ids=ids, **prompt_inputs).astype(embedded.dtype)
    if prompt.ndim == 2:
      prompt = jnp.broadcast_to(prompt[None], (embedded.shape[0],) + prompt.shape)
    return jnp.concatenate([prompt, embedded], axis=1)

  def combine_tokens(self, tokens: Array) -> Array:
    """Mask tokens laid out like the output: 1 at prompt positions, the task token dropped."""
    tokens = self._strip(tokens)
    return jnp.concatenate([jnp.ones((tokens.shape[0], self.length), tokens.dtype), tokens], axis=1)


def logical_axis_rules() -> tuple[tuple[str, None], ...]:
  """`PromptFamily.logical_axis_rules` of the multi-task families: task and language tables stay replicated."""
  return PROMPT_AXIS_RULES + MULTI_TASK_AXIS_RULES
