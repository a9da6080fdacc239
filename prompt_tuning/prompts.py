"""Soft prompts: the `[P, d]` parameter, its initialisers, and how it joins the embedded input.

The parameter lives at `encoder/prompt/prompt/prompt` (as the reference) with logical axes
`("prompt", "prompt_embed")`, so it stays replicated and exports as one array.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Protocol, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.errors import UserError

Array = jax.Array
Initializer = Callable[..., Array]
ArrayOrLoader = Any  # an array, or a zero-argument callable returning one (loaded lazily at init)
PROMPT_AXES = ("prompt", "prompt_embed")


class PromptFileError(UserError):
  """A prompt or embedding file that cannot be used: missing, not a `.npy`, not finite."""


class PromptFileNotFoundError(PromptFileError, FileNotFoundError):
  """The prompt or embedding file does not exist."""


class Vocabulary(Protocol):
  def encode(self, s: str) -> Sequence[int]:
    ...


def _materialise(x: ArrayOrLoader) -> np.ndarray:
  return np.asarray(x() if callable(x) else x)


# Initialisers run at every `init` trace; say each thing once.
_warn_once = functools.lru_cache(maxsize=None)(logging.warning)


def _check_width(name: str, table: np.ndarray, shape: Sequence[int]) -> None:
  if table.ndim != 2 or table.shape[-1] != shape[-1]:
    raise UserError(f"{name}: embedding table of shape {table.shape} does not match the prompt shape "
                     f"{tuple(shape)}; its last dimension must be the model width {shape[-1]}.")


# ----------------------------------------------------------------------------------------------- initialisers
def random_uniform(scale: float = 0.5, symmetric: bool = True) -> Initializer:
  """U[-scale, scale) as in the paper; `symmetric=False` gives the reference code's U[0, scale)."""

  def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
    low = -scale if symmetric else 0.0
    return jax.random.uniform(key, shape, dtype, minval=low, maxval=scale)

  return init


def from_sampled_vocab(embeddings: ArrayOrLoader, population_size: int | None = 5000) -> Initializer:
  """Each prompt row is a vocabulary embedding drawn from the first `population_size` rows.

  Drawn without replacement unless the prompt is longer than the population (then with replacement).
  """

  def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
    table = _materialise(embeddings)
    _check_width("from_sampled_vocab", table, shape)
    population = table.shape[0] if population_size is None else population_size
    if population <= 0:
      raise ValueError(f"population_size={population_size} must be positive (or None for the whole vocabulary).")
    if population > table.shape[0]:
      _warn_once("population_size=%d exceeds the vocabulary (%d rows); using all rows.", population,
                 table.shape[0])
      population = table.shape[0]
    replace = shape[0] > population
    if replace:
      _warn_once("Prompt length %d > population %d: sampling with replacement.", shape[0], population)
    idx = jax.random.choice(key, population, (shape[0],), replace=replace)
    return jnp.asarray(table)[idx].astype(dtype)

  return init


def from_class_labels(embeddings: ArrayOrLoader, vocab: Vocabulary, class_labels: Sequence[str] | None,
                      initializer: Initializer | None = None) -> Initializer:
  """Row i is the mean embedding of label i's sub-tokens; the remaining rows come from `initializer`.

  `class_labels=None` says "no labels" (every row from `initializer`); an empty list is refused as a mistake."""
  if class_labels is not None and (isinstance(class_labels, str) or not list(class_labels)):
    raise UserError(f"CLASS_LABELS={class_labels!r} must be a non-empty list of the task's label words, e.g. "
                    "--gin.CLASS_LABELS=\"['positive', 'negative']\"; for a task without labels use "
                    "prompts/from_sampled_vocab.gin (or CLASS_LABELS=None, which samples every row).")
  class_labels = list(class_labels or [])

  def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
    table = _materialise(embeddings)
    _check_width("from_class_labels", table, shape)
    fallback = initializer or from_sampled_vocab(table)
    if len(class_labels) > shape[0]:
      _warn_once("%d class labels but the prompt has %d rows; labels past row %d are skipped.",
                 len(class_labels), shape[0], shape[0])
    rows = []
    for label in list(class_labels)[:shape[0]]:
      ids = list(vocab.encode(label))
      if not ids:
        raise ValueError(f"Class label {label!r} encodes to no tokens; give a non-empty label.")
      rows.append(table[ids].mean(axis=0))
    prompt = fallback(key, shape, jnp.float32)
    if rows:
      prompt = prompt.at[:len(rows)].set(jnp.asarray(np.stack(rows), jnp.float32))
    return prompt.astype(dtype)

  return init


def text_embeddings(embeddings: ArrayOrLoader, vocab: Vocabulary, text: str) -> np.ndarray:
  """[tokens of `text`, d] float32: the embedding-table rows of `text`'s token ids (no EOS)."""
  table = _materialise(embeddings)
  return np.asarray(table[list(vocab.encode(text))], np.float32).reshape(-1, table.shape[-1])


def from_string(embeddings: ArrayOrLoader, vocab: Vocabulary, text: str,
                initializer: Initializer | None = None) -> Initializer:
  """The first rows are the embeddings of `text`'s tokens (truncated to P); the rest from `initializer`."""

  def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
    table = _materialise(embeddings)
    _check_width("from_string", table, shape)
    rows = text_embeddings(table, vocab, text)[:shape[0]]
    fallback = initializer or from_sampled_vocab(table)
    prompt = fallback(key, shape, jnp.float32)
    if len(rows):
      prompt = prompt.at[:len(rows)].set(jnp.asarray(rows))
    return prompt.astype(dtype)

  return init


def from_array(prompt: ArrayOrLoader) -> Initializer:
  """A fixed prompt (e.g. a released `.npy`); its shape must equal the prompt's."""

  def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
    del key
    value = _materialise(prompt)
    if tuple(value.shape) != tuple(shape):
      raise UserError(f"Prompt array of shape {value.shape} does not fit a prompt of shape {tuple(shape)} "
                       f"(PROMPT_LENGTH={shape[0]}, model width {shape[-1]}); set PROMPT_LENGTH={value.shape[0]} "
                       "or use a model of matching width.")
    return jnp.asarray(value, dtype)

  return init


def np_load(path: str, name: str = "PROMPT_FILE/EMBEDDING_FILE") -> Callable[[], np.ndarray]:
  """Lazily load an array from a `.npy` file (local or gs://), e.g. a prompt file without suffix. `name` is the
  setting errors name. A file that is not a `.npy`, or holds NaN/Inf, is refused."""

  def load() -> np.ndarray:
    from etils import epath  # local import keeps prompts.py importable without etils in minimal uses
    p = epath.Path(path)
    if not p.exists():
      raise PromptFileNotFoundError(f"Prompt/embedding file {path!r} does not exist; check {name}.")
    if p.is_dir():
      raise PromptFileError(f"{name}={path!r} is a folder; give the .npy file (e.g. numpy_checkpoints/"
                            "checkpoint_<step>/encoder.prompt.prompt.prompt).")
    stat = p.stat()
    try:
      return _read_npy(path, (stat.mtime, stat.length))  # a rewritten file is read again
    except PromptFileError as e:
      raise PromptFileError(f"{name}={path!r} {e}") from None

  return load


def np_save(path: str, value: np.ndarray) -> None:
  """Write `value` as a `.npy` file (local or gs://), creating its folder; what `np_load` reads back."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  out = epath.Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  with out.open("wb") as f:
    np.save(f, value)


def t5x_load(checkpoint_path: str | None,
             variable_path: str = "token_embedder/embedding") -> Callable[[], np.ndarray]:
  """Lazily read one variable (default the token embedding) from a checkpoint (T5X, our Orbax runs or HF)."""
  if checkpoint_path is None:
    raise UserError("The prompt initialiser reads the embedding table from INITIAL_CHECKPOINT_PATH, which is None; "
                    "give the frozen model's checkpoint as INITIAL_CHECKPOINT_PATH, use the *_numpy.gin variant of "
                    "the initialiser with EMBEDDING_FILE, or prompts/random_uniform.gin.")
  return functools.partial(_read_checkpoint_variable, checkpoint_path, variable_path)


# Read once per process: initialisers run at every `init` trace (shape inference, the sharded init, and the
# decoding cache's init in every predict trace), and gin builds a new loader each time the model is built.
@functools.lru_cache(maxsize=4)
def _read_npy(path: str, version: tuple[int, int]) -> np.ndarray:
  """The array, checked: a `.npy` (not a pickle), numbers, all finite. Errors complete "<setting>=<path> ..."."""
  del version  # part of the cache key
  from etils import epath
  try:
    with epath.Path(path).open("rb") as f:
      np.lib.format.read_magic(f)  # raises on anything but numpy's own header
      f.seek(0)
      value = np.load(f)  # allow_pickle is False by default: a pickle is refused
  except PermissionError as e:
    raise PromptFileError(f"cannot be read ({e.strerror}); fix its permissions.") from None
  except (ValueError, EOFError, OSError) as e:
    raise PromptFileError(f"is not a readable .npy file ({' '.join(str(e).split())[:120]}); write it with "
                          "numpy.save (a [rows, model width] float array).") from None
  if value.dtype.kind not in "biuf":
    raise PromptFileError(f"holds {value.dtype} values; it must hold numbers (float32).")
  bad = int(value.size - np.count_nonzero(np.isfinite(value))) if value.dtype.kind == "f" else 0
  if bad:
    raise PromptFileError(f"holds {bad} NaN/Inf value(s) of {value.size}; it cannot be trained or served. Use an "
                          "intact file (e.g. an earlier numpy_checkpoints/ export).")
  return _read_only(value)


@functools.lru_cache(maxsize=2)
def _read_checkpoint_variable(checkpoint_path: str, variable_path: str) -> np.ndarray:
  from prompt_tuning.runtime.checkpoints.restore import load_checkpoint_variable
  return _read_only(load_checkpoint_variable(checkpoint_path, variable_path))


def _read_only(value: np.ndarray) -> np.ndarray:
  """Cached arrays are shared by every caller: make accidental in-place edits fail loudly."""
  value.setflags(write=False)
  return value


# ----------------------------------------------------------------------------------------------- combination
def _prefix(prompt: Array, x: Array, tokens: Array) -> Array:
  del tokens
  return jnp.concatenate([prompt, x], axis=1)


def _prefix_after_bos(prompt: Array, x: Array, tokens: Array) -> Array:
  del tokens
  return jnp.concatenate([x[:, :1], prompt, x[:, 1:]], axis=1)


def _suffix_before_eos(prompt: Array, x: Array, tokens: Array) -> Array:
  """Insert the prompt after each example's last real token, before its EOS; padding moves to the end."""
  p, t = prompt.shape[1], x.shape[1]
  insert_at = jnp.maximum(jnp.sum(tokens != 0, axis=1) - 1, 0)[:, None]  # [B, 1]
  j = jnp.arange(t + p)[None, :]
  in_prompt = (j >= insert_at) & (j < insert_at + p)
  src_x = jnp.where(j < insert_at, j, jnp.clip(j - p, 0, t - 1))
  src_p = jnp.clip(j - insert_at, 0, p - 1)
  take = lambda arr, idx: jnp.take_along_axis(arr, idx.reshape(idx.shape + (1,) * (arr.ndim - 2)), axis=1)
  mask = in_prompt.reshape(in_prompt.shape + (1,) * (x.ndim - 2))
  return jnp.where(mask, take(prompt, src_p), take(x, src_x))


COMBINATIONS: dict[str, Callable[[Array, Array, Array], Array]] = {
    "prefix": _prefix,
    "prefix_after_bos": _prefix_after_bos,
    "suffix_before_eos": _suffix_before_eos,
}


class Prompt(nn.Module):
  """The trainable prompt: returns an unbatched `[length, d]` array."""

  length: int = 100
  initializer: Initializer = random_uniform()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: Array, embedded: Array, **unused_prompt_inputs: Array) -> Array:
    del tokens
    if self.length <= 0:
      raise ValueError(f"Prompt length must be positive, got {self.length}.")
    value = self.param("prompt", nn.with_logical_partitioning(self.initializer, PROMPT_AXES),
                       (self.length, embedded.shape[-1]), jnp.float32)
    return value.astype(self.dtype)


class PromptedInputs(nn.Module):
  """Joins a prompt module's output with the embedded inputs (`encoder/prompt`), as `combination` says."""

  prompt: nn.Module
  combination: str = "prefix"

  def __post_init__(self):
    if self.combination not in COMBINATIONS:
      raise ValueError(f"Unknown prompt combination {self.combination!r}; choose one of {sorted(COMBINATIONS)}.")
    super().__post_init__()

  @property
  def length(self) -> int:
    return self.prompt.length

  def __call__(self, tokens: Array, embedded: Array, **prompt_inputs: Array) -> Array:
    prompt = self.prompt(tokens, embedded, **prompt_inputs).astype(embedded.dtype)
    if prompt.ndim == 2:
      prompt = jnp.broadcast_to(prompt[None], (embedded.shape[0],) + prompt.shape)
    return COMBINATIONS[self.combination](prompt, embedded, tokens)

  def combine_tokens(self, tokens: Array) -> Array:
    """Token ids laid out like the combined embeddings, with 1 at prompt positions (for masks)."""
    fake = jnp.ones((tokens.shape[0], self.length), tokens.dtype)
    return COMBINATIONS[self.combination](fake, tokens, tokens)
