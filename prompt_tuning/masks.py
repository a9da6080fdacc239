"""Who may attend to whom in a prompted encoder: attention-visibility flags between prompt and input positions.

`decoder_attention_mask` is the decoder-only counterpart (causal or prefix-LM, with the prompt before the inputs).

Each flag reads `query->key` (the reference's `extended/masks.py` convention):

  input->input           inputs attend to (non-padding) inputs: always on
  input->prompt          inputs attend to the prompt: always on
  prompt->input          prompt positions attend to the inputs
  prompt->prompt         prompt positions attend to every prompt position
  prompt->prompt;causal  prompt positions attend to earlier prompt positions and themselves

`None` (the default, and the paper's setting) leaves everything visible. With neither prompt->prompt flag a prompt
position attends to itself only (so no attention row is empty). Select with the gin macro `PROMPT_ATTENTION`
(`models/t5_1_1.gin`), e.g. `--gin.PROMPT_ATTENTION="['input->input', 'input->prompt']"`: a prompt that reads
nothing but itself, which the inputs read.
"""
from __future__ import annotations

import functools
from typing import Callable, Iterable

import jax.numpy as jnp
from absl import logging

Array = jnp.ndarray

INPUT_INPUT = "input->input"
INPUT_PROMPT = "input->prompt"
PROMPT_INPUT = "prompt->input"
PROMPT_PROMPT = "prompt->prompt"
PROMPT_PROMPT_CAUSAL = "prompt->prompt;causal"
ATTENTION_TYPES = (INPUT_INPUT, INPUT_PROMPT, PROMPT_INPUT, PROMPT_PROMPT, PROMPT_PROMPT_CAUSAL)
ALWAYS_ON = frozenset({INPUT_INPUT, INPUT_PROMPT})


def normalise_attention(types: Iterable[str] | None, warn: bool = False) -> frozenset[str] | None:
  """Checks the flags; adds the always-on ones and keeps only the causal one of two prompt->prompt flags.

  Raises ValueError, naming the bad value, for an unknown flag or a bare string (a gin literal without brackets).
  """
  if types is None:
    return None
  if isinstance(types, str):
    raise ValueError(f"PROMPT_ATTENTION={types!r} is a string; give a list of flags, e.g. "
                     f"--gin.PROMPT_ATTENTION=\"['{INPUT_INPUT}', '{PROMPT_INPUT}']\".")
  chosen = set(types)
  unknown = sorted(chosen - set(ATTENTION_TYPES))
  if unknown:
    raise ValueError(f"Unknown prompt attention flag(s) {unknown} in PROMPT_ATTENTION; each is one of "
                     f"{list(ATTENTION_TYPES)} (query->key).")
  if warn and not ALWAYS_ON <= chosen:
    logging.warning("PROMPT_ATTENTION %s lacks %s; inputs always see inputs and the prompt, so they are added.",
                    sorted(chosen), sorted(ALWAYS_ON - chosen))
  if PROMPT_PROMPT in chosen and PROMPT_PROMPT_CAUSAL in chosen:
    if warn:
      logging.warning("PROMPT_ATTENTION has both %r and %r; using the more specific %r.", PROMPT_PROMPT,
                      PROMPT_PROMPT_CAUSAL, PROMPT_PROMPT_CAUSAL)
    chosen.discard(PROMPT_PROMPT)
  return frozenset(chosen | ALWAYS_ON)


@functools.lru_cache(maxsize=None)
def announce(types: tuple[str, ...]) -> frozenset[str]:
  """`normalise_attention` with its warnings, and the result in words, logged once per distinct flag list
  (Flax rebuilds modules on every apply)."""
  visibility = normalise_attention(types, warn=True)
  logging.info("Prompt attention: %s.", describe(visibility))
  return visibility


def describe(types: frozenset[str]) -> str:
  """The flags in words, for the log."""
  lines = []
  for flag in ATTENTION_TYPES:
    if flag in types:
      query, key = flag.split("->")
      lines.append(f"{query}s see {key.replace(';causal', '')}s" + (" (earlier ones only)" if "causal" in key else ""))
  if not types & {PROMPT_PROMPT, PROMPT_PROMPT_CAUSAL}:
    lines.append("each prompt position sees itself only")
  return "; ".join(lines)


def prompt_positions(combine_tokens: Callable[[Array], Array], tokens: Array) -> Array:
  """[B, L] True where the prompt sits in the combined sequence, for any combination (prefix, suffix, ...).

  `combine_tokens` lays token ids out like the combined embeddings, with 1 at prompt positions. Shifting every
  real token id by one moves the input positions' values and leaves the prompt's 1s (and the padding) in place;
  padding keeps its place because lengths are unchanged.
  """
  combined = combine_tokens(tokens)
  shifted = combine_tokens(jnp.where(tokens > 0, tokens + 1, 0))
  return (combined == shifted) & (combined > 0)


def prompt_attention_mask(mask_tokens: Array, is_prompt: Array, types: frozenset[str]) -> Array:
  """[B, 1, L, L] boolean self-attention mask of the combined sequence under the flags `types`."""
  valid = mask_tokens > 0
  is_input = valid & ~is_prompt
  query = lambda x: x[:, None, :, None]
  key = lambda x: x[:, None, None, :]
  mask = query(is_input) & (key(is_input) | key(is_prompt))
  if PROMPT_INPUT in types:
    mask = mask | (query(is_prompt) & key(is_input))
  return mask | (query(is_prompt) & key(is_prompt) & _among_prompt(mask_tokens.shape[1], types))


def _among_prompt(length: int, types: frozenset[str]) -> Array:
  """[L, L]: which prompt positions a prompt position reads under the flags (all, earlier ones, or itself)."""
  positions = jnp.arange(length)
  if PROMPT_PROMPT in types:
    return jnp.ones((length, length), bool)
  if PROMPT_PROMPT_CAUSAL in types:
    return positions[None, :] <= positions[:, None]
  return positions[None, :] == positions[:, None]


def decoder_attention_mask(mask_tokens: Array, is_prompt: Array | None = None,
                           bidirectional: Array | None = None, types: frozenset[str] | None = None) -> Array:
  """[B, 1, L, L] self-attention mask of a (prompted) decoder-only sequence.

  Causal, except that positions where `bidirectional` is set (prefix-LM inputs, Flaxformer's
  `decoder_causal_attention`, with the prompt included) see each other; the prompt positions (`is_prompt`) see
  each other and are seen by every later position; padding (`mask_tokens == 0`) sees and is seen by nothing.
  `types` (the flags above) restricts what the prompt positions read: the other prompt positions by the
  prompt->prompt flags, the rest (what causality or the prefix allows) only with prompt->input; None keeps both.
  """
  valid = mask_tokens > 0
  length = mask_tokens.shape[1]
  query = lambda x: x[:, None, :, None]
  key = lambda x: x[:, None, None, :]
  positions = jnp.arange(length)
  allowed = jnp.broadcast_to((positions[None, :] <= positions[:, None])[None, None], (valid.shape[0], 1, length,
                                                                                      length))
  if bidirectional is not None:
    allowed = allowed | (query(bidirectional > 0) & key(bidirectional > 0))
  if is_prompt is not None:
    types = frozenset({PROMPT_INPUT, PROMPT_PROMPT}) if types is None else types
    from_prompt = key(is_prompt) & _among_prompt(length, types)
    if PROMPT_INPUT in types:
      from_prompt = from_prompt | (key(~is_prompt) & allowed)
    allowed = jnp.where(query(is_prompt), from_prompt, allowed)
  return allowed & query(valid) & key(valid)
