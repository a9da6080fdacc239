"""Autoregressive decoding with T5X semantics: temperature sampling and beam search.

The functions know nothing about the model. The caller passes a cache pytree and a `tokens_to_logits(state)`
callable that takes a `DecodingState` and returns next-token logits `[rows, vocab]` plus the updated cache.

Conventions shared with T5X `t5x/decoding.py`:
- `inputs [B, L]` is a right-shifted decoder input: position 0 is the BOS slot, and a non-zero `inputs[:, j]`
  forces output position `j - 1` (the "prompt_with_targets" prefix); zeros are decoded.
- Outputs are `[B, num_decodes, L]`, sorted by score ascending, so `[:, -1]` is the best.
- Cache leaves are split along a leading batch axis when decodes or beams are added or reordered. 0-d
  leaves (a scalar `cache_index`) and leaves named in `UNBATCHED_CACHE_LEAVES` are shared and left alone;
  a `[B]` `cache_index` (prefilled caches) is split like any other leaf.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax
import jax
from jax import lax
import jax.numpy as jnp

PyTree = Any

# "Effective minus infinity" for masked logits and dead beams (T5X NEG_INF).
NEG_INF = -1.0e7
# Temperatures at or below this decode greedily.
MIN_TEMPERATURE = 1e-4
# Cache leaves with no batch axis, shared by every row (the decoder's cached relative-position table, the
# absolute position embedder's index).
UNBATCHED_CACHE_LEAVES = ("cached_bias", "position_embedder_index")


@flax.struct.dataclass
class DecodingState:
  """What `tokens_to_logits` sees at each step (rows = batch * decodes or batch * beams).

  Attributes:
    cur_index: [rows] int32 position of the token being fed.
    sequences: [rows, L] tokens so far; column 0 is the BOS slot.
    cur_token: [rows, 1] int32 token being fed.
    cache: the decoder cache pytree.
  """
  cur_index: jnp.ndarray
  sequences: jnp.ndarray
  cur_token: jnp.ndarray
  cache: PyTree


TokensToLogits = Callable[[DecodingState], tuple[jnp.ndarray, PyTree]]


# ------------------------------------------------------------------------------------------------------------
# Batch and beam helpers.
# ------------------------------------------------------------------------------------------------------------


def _leaf_name(path: Sequence[Any]) -> str | None:
  if not path:
    return None
  key = path[-1]
  name = getattr(key, "key", getattr(key, "name", None))
  return None if name is None else str(name)


def cache_map(fn: Callable[..., jnp.ndarray], cache: PyTree, *others: PyTree) -> PyTree:
  """Maps `fn` over the leaves of `cache` (zipped with `others`) that have a leading batch axis.

  0-d leaves and leaves named in `UNBATCHED_CACHE_LEAVES` are returned from `cache` unchanged.
  """
  def apply(path, leaf, *rest):
    if jnp.ndim(leaf) == 0 or _leaf_name(path) in UNBATCHED_CACHE_LEAVES:
      return leaf
    return fn(leaf, *rest)

  return jax.tree_util.tree_map_with_path(apply, cache, *others)


def add_beam_dim(x: jnp.ndarray, beam_size: int) -> jnp.ndarray:
  """[B, ...] -> [B, beam_size, ...] by repetition."""
  return jnp.repeat(jnp.expand_dims(x, 1), beam_size, axis=1)


def flatten_beam_dim(x: jnp.ndarray) -> jnp.ndarray:
  """[B, beam, ...] -> [B * beam, ...]."""
  return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def unflatten_beam_dim(x: jnp.ndarray, batch_size: int, beam_size: int) -> jnp.ndarray:
  """[B * beam, ...] -> [B, beam, ...]."""
  if x.shape[0] != batch_size * beam_size:
    raise ValueError(f"Leading dim {x.shape[0]} of shape {x.shape} is not batch_size * beam_size = "
                     f"{batch_size} * {beam_size}.")
  return x.reshape((batch_size, beam_size) + x.shape[1:])


def flat_batch_beam_expand(x: jnp.ndarray, beam_size: int) -> jnp.ndarray:
  """[B, ...] -> [B * beam_size, ...], the copies of one row kept together."""
  return flatten_beam_dim(add_beam_dim(x, beam_size))


def gather_beams(nested: PyTree, beam_indices: jnp.ndarray) -> PyTree:
  """Picks beams per batch row: leaves [B, old_beams, ...] -> [B, new_beams, ...].

  `beam_indices` is [B, new_beams] int32. Unbatched cache leaves (see `cache_map`) pass through.
  """
  batch_indices = jnp.arange(beam_indices.shape[0])[:, None]
  return cache_map(lambda x: x[batch_indices, beam_indices], nested)


def _match_frozen(old_cache: PyTree, new_cache: PyTree) -> PyTree:
  """Keeps the cache container type stable across loop steps (while_loop needs the same pytree)."""
  if isinstance(old_cache, flax.core.FrozenDict) and not isinstance(new_cache, flax.core.FrozenDict):
    return flax.core.freeze(new_cache)
  return new_cache


def _write_column(x: jnp.ndarray, index: jnp.ndarray, values: jnp.ndarray) -> jnp.ndarray:
  """x[..., index[b]] = values[b, ...] for every batch row b; x is [B, ..., L], values is x.shape[:-1]."""
  one_hot = jax.nn.one_hot(index, x.shape[-1], dtype=jnp.bool_)
  one_hot = one_hot.reshape((x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],))
  return jnp.where(one_hot, values[..., None], x)


def _check_inputs(inputs: jnp.ndarray, num_decodes: int) -> None:
  if inputs.ndim != 2:
    raise ValueError(f"inputs must be [batch, length] token ids, got shape {inputs.shape}.")
  if num_decodes < 1:
    raise ValueError(f"num_decodes={num_decodes} must be >= 1.")


# ------------------------------------------------------------------------------------------------------------
# Temperature sampling.
# ------------------------------------------------------------------------------------------------------------


@flax.struct.dataclass
class SamplingLoopState:
  """Loop carry of `temperature_sample`; `logit_callback_fn` receives it (rows = batch * num_decodes).

  Attributes:
    step: scalar int32 loop step.
    cur_index: [rows] int32 position of the token being fed.
    sequences: [rows, L + 2]: BOS slot, L output slots, one overflow slot for rows already at their end.
    cache: the decoder cache.
    cur_token: [rows, 1] int32.
    ended: [rows, 1] bool.
    rng: PRNG key.
    log_prob: [rows] float32 summed log-probability of the sampled (non-forced) tokens.
  """
  step: jnp.ndarray
  cur_index: jnp.ndarray
  sequences: jnp.ndarray
  cache: PyTree
  cur_token: jnp.ndarray
  ended: jnp.ndarray
  rng: jnp.ndarray
  log_prob: jnp.ndarray


LogitCallbackFn = Callable[[jnp.ndarray, SamplingLoopState], jnp.ndarray]


def _topk_mask(logits: jnp.ndarray, topk: int) -> jnp.ndarray:
  """Keeps the logits >= the k-th largest of each row (ties kept), the rest set to NEG_INF."""
  if topk > logits.shape[-1]:
    raise ValueError(f"topk={topk} exceeds the vocabulary size {logits.shape[-1]}.")
  kth = lax.top_k(logits, topk)[0][..., -1:]
  return jnp.where(logits >= kth, logits, NEG_INF)


def _topp_mask(logits: jnp.ndarray, topp: float) -> jnp.ndarray:
  """Keeps the smallest set of most likely tokens whose probability reaches `topp` (nucleus), rest NEG_INF."""
  sorted_logits = jnp.flip(jnp.sort(logits, axis=-1), axis=-1)
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  cutoff = jnp.min(jnp.where(mass_before < topp, sorted_logits, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits >= cutoff, logits, NEG_INF)


def _sample_tokens(
    logits: jnp.ndarray, rng: jnp.ndarray, temperature: jnp.ndarray, topk: int, topp: float,
    rescale_log_probs: bool) -> tuple[jnp.ndarray, jnp.ndarray]:
  """One sampling step. logits [rows, V], temperature broadcastable to [rows, 1] -> token, log-prob [rows]."""
  scaled = logits / jnp.maximum(temperature, MIN_TEMPERATURE)
  if topk:
    scaled = _topk_mask(scaled, topk)
  if topp:
    scaled = _topp_mask(scaled, topp)
  greedy = (temperature <= MIN_TEMPERATURE)[:, 0]
  token = jnp.where(greedy, jnp.argmax(logits, axis=-1),
                    jax.random.categorical(rng, scaled)).astype(jnp.int32)
  log_probs = jax.nn.log_softmax(scaled if rescale_log_probs else logits)
  log_prob = jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]
  if rescale_log_probs:
    log_prob = jnp.where(greedy, 0.0, log_prob)
  return token, log_prob


def _check_sampling_args(topk: int, topp: float, max_decode_steps: int | None, length: int) -> None:
  if topk < 0 or topp < 0:
    raise ValueError(f"topk={topk} and topp={topp} must be >= 0 (0 disables them).")
  if topk and topp:
    raise ValueError(f"topk={topk} and topp={topp} are mutually exclusive: set one of them to 0.")
  if max_decode_steps is not None and not 0 < max_decode_steps <= length:
    raise ValueError(f"max_decode_steps={max_decode_steps} must be in [1, inputs length {length}].")


def temperature_sample(
    inputs: jnp.ndarray,
    cache: PyTree,
    tokens_to_logits: TokensToLogits,
    eos_id: int,
    decode_rng: jnp.ndarray | None = None,
    num_decodes: int = 1,
    temperature: float | jnp.ndarray = 1.0,
    topk: int = 1,
    topp: float = 0.0,
    initial_index: jnp.ndarray | None = None,
    max_decode_steps: int | None = None,
    rescale_log_probs: bool = True,
    logit_callback_fn: LogitCallbackFn | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Samples `num_decodes` continuations per row (T5X `decoding.temperature_sample`).

  Args:
    inputs: [B, L] int32 right-shifted decoder inputs; non-zero positions are forced, zeros are sampled.
    cache: decoder cache for B rows; it is expanded to B * num_decodes rows.
    tokens_to_logits: see the module docstring.
    eos_id: a row stops after emitting one more `eos_id` than `inputs` holds; later positions are 0.
    decode_rng: PRNG key (default `PRNGKey(0)`).
    num_decodes: samples per row.
    temperature: scalar or [B]; values <= MIN_TEMPERATURE decode with argmax.
    topk: sample among the k most likely tokens (0 = all). The default 1 is greedy decoding.
    topp: nucleus sampling mass (0 = off). Mutually exclusive with topk.
    initial_index: [B] int32 positions already in a prefilled cache; decoding feeds `inputs[:, initial_index]`
      first. None starts from the BOS slot (token 0).
    max_decode_steps: at most this many tokens after the non-zero `inputs` positions.
    rescale_log_probs: the returned log-probs include temperature, topk and topp (zero for greedy) if True,
      else they are the model's own log-probs of the chosen tokens.
    logit_callback_fn: (logits, SamplingLoopState) -> logits, applied before sampling.

  Returns:
    sequences [B, num_decodes, L] and log_probs [B, num_decodes], sorted by log-prob ascending.
  """
  _check_inputs(inputs, num_decodes)
  _check_sampling_args(topk, topp, max_decode_steps, inputs.shape[1])
  batch_size = inputs.shape[0]
  rng = jax.random.PRNGKey(0) if decode_rng is None else decode_rng
  temperature = jnp.asarray(temperature, jnp.float32)
  if temperature.ndim == 1 and temperature.shape[0] != batch_size:
    raise ValueError(f"temperature has shape {temperature.shape}: give a scalar or one value per batch row "
                     f"({batch_size}).")
  temperature = jnp.repeat(temperature, num_decodes) if temperature.ndim == 1 else temperature.reshape(1)
  temperature = temperature[:, None]
  expand = functools.partial(flat_batch_beam_expand, beam_size=num_decodes)
  if initial_index is not None:
    initial_index = expand(jnp.asarray(initial_index, jnp.int32))
  sequences, log_prob = _sampling_loop(
      expand(jnp.asarray(inputs, jnp.int32)), cache_map(expand, cache), tokens_to_logits, eos_id, rng,
      functools.partial(_sample_tokens, temperature=temperature, topk=topk, topp=topp,
                        rescale_log_probs=rescale_log_probs),
      initial_index, max_decode_steps, logit_callback_fn)
  sequences = unflatten_beam_dim(sequences, batch_size, num_decodes)
  log_prob = unflatten_beam_dim(log_prob, batch_size, num_decodes)
  order = jnp.argsort(log_prob, axis=-1)
  sequences = jnp.take_along_axis(sequences, order[..., None], axis=1)
  return sequences, jnp.take_along_axis(log_prob, order, axis=1)


def _sampling_loop(
    inputs: jnp.ndarray,
    cache: PyTree,
    tokens_to_logits: TokensToLogits,
    eos_id: int,
    rng: jnp.ndarray,
    sample_fn: Callable[[jnp.ndarray, jnp.ndarray], tuple[jnp.ndarray, jnp.ndarray]],
    initial_index: jnp.ndarray | None,
    max_decode_steps: int | None,
    logit_callback_fn: LogitCallbackFn | None,
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """The while loop of `temperature_sample` over flat rows: returns [rows, L] tokens and [rows] log-probs."""
  rows, length = inputs.shape
  # Per row, the number of output positions to fill: all L, or the non-zero inputs plus max_decode_steps.
  if max_decode_steps is None:
    end = jnp.full((rows,), length, jnp.int32)
  else:
    end = jnp.minimum(length, jnp.sum(inputs != 0, axis=1) + max_decode_steps).astype(jnp.int32)
  sequences = jnp.pad(inputs, ((0, 0), (0, 2)))
  if initial_index is None:
    index = jnp.zeros((rows,), jnp.int32)
    token = jnp.zeros((rows, 1), jnp.int32)
  else:
    index = initial_index
    token = jnp.take_along_axis(sequences, index[:, None], axis=1)
  initial_eos = jnp.sum(sequences == eos_id, axis=1, keepdims=True)
  init = SamplingLoopState(
      step=jnp.zeros((), jnp.int32), cur_index=index, sequences=sequences, cache=cache, cur_token=token,
      ended=jnp.zeros((rows, 1), jnp.bool_), rng=rng, log_prob=jnp.zeros((rows,), jnp.float32))

  def body(state: SamplingLoopState) -> SamplingLoopState:
    step_rng, next_rng = jax.random.split(state.rng)
    logits, new_cache = tokens_to_logits(DecodingState(
        cur_index=state.cur_index, sequences=state.sequences[:, :-2], cur_token=state.cur_token,
        cache=state.cache))
    logits = logits.astype(jnp.float32)
    if logit_callback_fn is not None:
      logits = logit_callback_fn(logits, state)
    sampled, sampled_log_prob = sample_fn(logits, step_rng)
    # Rows already at their end keep overwriting the overflow slot until every row has ended.
    i = jnp.minimum(state.cur_index, end)
    forced = jnp.take_along_axis(state.sequences, (i + 1)[:, None], axis=1)[:, 0]
    free = forced == 0
    alive = ~state.ended[:, 0]
    log_prob = state.log_prob + jnp.where(free & alive, sampled_log_prob, 0.0)
    next_token = jnp.where(alive, jnp.where(free, sampled, forced), 0)
    sequences = _write_column(state.sequences, i + 1, next_token)
    new_eos = jnp.sum(sequences == eos_id, axis=1, keepdims=True) > initial_eos
    ended = state.ended | new_eos | (i >= end - 1)[:, None]
    return SamplingLoopState(
        step=state.step + 1, cur_index=i + 1, sequences=sequences,
        cache=_match_frozen(state.cache, new_cache), cur_token=next_token[:, None], ended=ended, rng=next_rng,
        log_prob=log_prob)

  final = lax.while_loop(lambda state: ~jnp.all(state.ended), body, init)
  return final.sequences[:, 1:-1], final.log_prob


# ------------------------------------------------------------------------------------------------------------
# Beam search.
# ------------------------------------------------------------------------------------------------------------


def brevity_penalty(alpha: float, length: int | jnp.ndarray) -> jnp.ndarray:
  """GNMT length penalty ((5 + length) / 6) ** alpha; beam scores are log-prob / penalty."""
  return jnp.power((5.0 + length) / 6.0, alpha)


@flax.struct.dataclass
class BeamState:
  """Loop carry of `beam_search`; all arrays lead with [B] (beams second), sequences have L + 1 slots."""
  cur_index: jnp.ndarray  # [B] int32 position being fed.
  live_logprobs: jnp.ndarray  # [B, beams] float32, ascending.
  finished_scores: jnp.ndarray  # [B, beams] float32, ascending.
  live_seqs: jnp.ndarray  # [B, beams, L + 1] int32; slot 0 is BOS.
  finished_seqs: jnp.ndarray  # [B, beams, L + 1] int32.
  finished_flags: jnp.ndarray  # [B, beams] bool: slot holds a real finished sequence.
  cache: PyTree  # leaves [B, beams, ...].


def _fit_length(x: jnp.ndarray, length: int) -> jnp.ndarray:
  """Right-pads [B, n] with zeros or truncates it to [B, length]."""
  return jnp.pad(x, ((0, 0), (0, max(0, length - x.shape[1]))))[:, :length]


def _top_beams(scores: jnp.ndarray, k: int) -> jnp.ndarray:
  """Indices of the k best entries of [B, n], in ascending order (best last)."""
  return jnp.flip(lax.top_k(scores, k)[1], axis=1)


def beam_search(
    inputs: jnp.ndarray,
    cache: PyTree,
    tokens_to_logits: TokensToLogits,
    eos_id: int,
    num_decodes: int = 4,
    alpha: float = 0.6,
    max_decode_len: int | None = None,
    decode_rng: jnp.ndarray | None = None,
    initial_index: jnp.ndarray | None = None,
    min_log_prob: float = NEG_INF,
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Beam search with a brevity penalty (T5X `decoding.beam_search`).

  Keeps `num_decodes` live beams and the `num_decodes` best finished (eos-ended) sequences, scored by
  log-prob / brevity_penalty(alpha, length). A batch row stops once no live beam can beat its worst finished
  one, its best live log-prob falls below `min_log_prob`, or its sequences are full.

  Args:
    inputs: [B, L] int32 right-shifted decoder inputs; non-zero positions are forced (their probability is not
      counted).
    cache: decoder cache for B rows; leaves get a beam axis.
    tokens_to_logits: see the module docstring.
    eos_id: end-of-sequence id.
    num_decodes: beam size, also the number of sequences returned.
    alpha: brevity-penalty exponent.
    max_decode_len: output length (default L).
    decode_rng: unused (beam search is deterministic); accepted for interface parity.
    initial_index: [B] int32 positions already in a prefilled cache (see `temperature_sample`).
    min_log_prob: a row stops when its best live log-prob is below this.

  Returns:
    sequences [B, num_decodes, max_decode_len] and scores [B, num_decodes], ascending (best last). Rows
    with no finished sequence return their live beams and raw log-probs.
  """
  del decode_rng
  _check_inputs(inputs, num_decodes)
  length = inputs.shape[1] if max_decode_len is None else max_decode_len
  if length < 1:
    raise ValueError(f"max_decode_len={max_decode_len} must be >= 1.")
  batch_size, beams = inputs.shape[0], num_decodes
  # forced[:, j] is the token forced at sequence slot j (slot j holds output position j - 1).
  forced = _fit_length(jnp.asarray(inputs, jnp.int32), length + 1)
  if initial_index is None:
    index = jnp.zeros((batch_size,), jnp.int32)
    prefix = jnp.zeros_like(forced)
  else:
    index = jnp.asarray(initial_index, jnp.int32)
    prefix = jnp.where(jnp.arange(length + 1)[None, :] <= index[:, None], forced, 0)
  init = BeamState(
      cur_index=index,
      live_logprobs=jnp.tile(jnp.array([[0.0] + [NEG_INF] * (beams - 1)], jnp.float32), (batch_size, 1)),
      finished_scores=jnp.full((batch_size, beams), NEG_INF, jnp.float32),
      live_seqs=add_beam_dim(prefix, beams),
      finished_seqs=jnp.zeros((batch_size, beams, length + 1), jnp.int32),
      finished_flags=jnp.zeros((batch_size, beams), jnp.bool_),
      cache=cache_map(functools.partial(add_beam_dim, beam_size=beams), cache))
  best_penalty = brevity_penalty(alpha, length)

  def active(state: BeamState) -> jnp.ndarray:
    """[B] bool: the row can still change its result."""
    best_live = jnp.max(state.live_logprobs, axis=1)
    worst_finished = jnp.where(
        state.finished_flags, jnp.min(state.finished_scores, axis=1, keepdims=True), NEG_INF)
    improvable = ~jnp.all(worst_finished > (best_live / best_penalty)[:, None], axis=1)
    return (state.cur_index < length) & improvable & (best_live >= min_log_prob)

  def body(state: BeamState) -> BeamState:
    i = jnp.minimum(state.cur_index, length - 1)
    tokens = jnp.take_along_axis(state.live_seqs, i[:, None, None], axis=2)
    flat_logits, flat_cache = tokens_to_logits(DecodingState(
        cur_index=flat_batch_beam_expand(i, beams),
        sequences=flatten_beam_dim(state.live_seqs[:, :, :length]), cur_token=flatten_beam_dim(tokens),
        cache=cache_map(flatten_beam_dim, state.cache)))
    new_cache = cache_map(lambda x: unflatten_beam_dim(x, batch_size, beams),
                          _match_frozen(state.cache, flat_cache))
    log_probs = jax.nn.log_softmax(unflatten_beam_dim(flat_logits.astype(jnp.float32), batch_size, beams))
    log_probs = log_probs + state.live_logprobs[:, :, None]
    vocab = log_probs.shape[-1]
    # The best 2 * beams extensions, so that beams finishing at once still leave `beams` live ones.
    cand_log_probs, cand = lax.top_k(log_probs.reshape(batch_size, beams * vocab), 2 * beams)
    cand_beams, cand_tokens = cand // vocab, cand % vocab
    # Inside the forced prefix only the best candidate survives, with log-prob 0.
    next_forced = jnp.take_along_axis(forced, (i + 1)[:, None], axis=1)
    free = next_forced == 0
    forced_log_probs = jnp.full_like(cand_log_probs, NEG_INF).at[:, 0].set(0.0)
    cand_log_probs = jnp.where(free, cand_log_probs, forced_log_probs)
    cand_tokens = jnp.where(free, cand_tokens, next_forced)
    cand_seqs = _write_column(gather_beams(state.live_seqs, cand_beams), i + 1, cand_tokens)
    newly_finished = cand_tokens == eos_id

    alive_log_probs = cand_log_probs + newly_finished * NEG_INF
    keep = _top_beams(alive_log_probs, beams)
    live_seqs, live_logprobs = gather_beams((cand_seqs, alive_log_probs), keep)
    cache = gather_beams(new_cache, jnp.take_along_axis(cand_beams, keep, axis=1))

    new_scores = cand_log_probs / brevity_penalty(alpha, i + 1)[:, None] + (~newly_finished) * NEG_INF
    pool = (jnp.concatenate([state.finished_seqs, cand_seqs], axis=1),
            jnp.concatenate([state.finished_scores, new_scores], axis=1),
            jnp.concatenate([state.finished_flags, newly_finished], axis=1))
    finished_seqs, finished_scores, finished_flags = gather_beams(pool, _top_beams(pool[1], beams))
    new_state = BeamState(
        cur_index=i + 1, live_logprobs=live_logprobs, finished_scores=finished_scores, live_seqs=live_seqs,
        finished_seqs=finished_seqs, finished_flags=finished_flags, cache=cache)
    # Rows that were already done keep their state (shared 0-d cache leaves follow the step).
    row_active = active(state)
    return cache_map(
        lambda new, old: jnp.where(row_active.reshape((-1,) + (1,) * (new.ndim - 1)), new, old),
        new_state, state)

  final = lax.while_loop(lambda state: jnp.any(active(state)), body, init)
  has_finished = jnp.any(final.finished_flags, axis=1)
  sequences = jnp.where(has_finished[:, None, None], final.finished_seqs, final.live_seqs)
  scores = jnp.where(has_finished[:, None], final.finished_scores, final.live_logprobs)
  return sequences[:, :, 1:], scores
