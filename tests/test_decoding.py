"""Tests for prompt_tuning.runtime.decoding against a toy cached model and brute-force references."""
from __future__ import annotations

import functools
import itertools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.runtime import decoding

V = 6  # vocabulary: 0 pad/BOS, 1 eos, 2..5 words
EOS = 1
NUM_STATES = 7  # the toy cache hashes the whole prefix: a wrongly gathered cache changes the logits


class ToyModel:
  """Logits depend on a prefix hash and a position counter, both kept in the cache, plus an unbatched bias."""

  def __init__(self, seed: int, max_len: int, implausible: tuple[int, ...] = (), eos_boost_step=None):
    rng = np.random.RandomState(seed)
    self.table = rng.normal(size=(NUM_STATES, V)) * 2.0
    self.table[:, list(implausible)] -= 40.0
    self.by_position = rng.normal(size=(max_len + 1, V))
    if eos_boost_step is not None:
      self.by_position[eos_boost_step, EOS] += 20.0
    self.bias = rng.normal(size=(V,)) * 0.5
    self.max_len = max_len

  def cache(self, states, positions=None, vector_cache_index=False):
    """Cache for rows starting in hash `states` after `positions` fed tokens (default 0)."""
    states = jnp.asarray(states, jnp.int32)
    positions = jnp.zeros_like(states) if positions is None else jnp.asarray(positions, jnp.int32)
    return {
        'decoder': {'state': states, 'counter': positions,
                    'cache_index': positions if vector_cache_index else jnp.zeros((), jnp.int32)},
        'relpos_bias': {'cached_bias': jnp.asarray(self.bias[None], jnp.float32)},
    }

  def tokens_to_logits(self, state: decoding.DecodingState):
    rows = state.cur_token.shape[0]
    dec = state.cache['decoder']
    # Shape checks run at trace time: they fail if the decoders expanded or skipped the wrong cache leaves.
    assert state.cur_token.shape == (rows, 1) and state.cur_index.shape == (rows,)
    assert dec['state'].shape == (rows,) and dec['counter'].shape == (rows,)
    assert dec['cache_index'].shape in ((), (rows,))
    assert state.cache['relpos_bias']['cached_bias'].shape == (1, V)
    new_state = (dec['state'] * 3 + state.cur_token[:, 0]) % NUM_STATES
    position = jnp.minimum(dec['counter'], self.max_len)
    logits = (jnp.asarray(self.table, jnp.float32)[new_state]
              + jnp.asarray(self.by_position, jnp.float32)[position]
              + state.cache['relpos_bias']['cached_bias'])
    new_cache = {
        'decoder': {'state': new_state, 'counter': dec['counter'] + 1, 'cache_index': dec['cache_index'] + 1},
        'relpos_bias': dict(state.cache['relpos_bias']),
    }
    return logits, new_cache

  # numpy reference of the same model.
  def step(self, state: int, token: int, position: int):
    new_state = (state * 3 + token) % NUM_STATES
    logits = self.table[new_state] + self.by_position[min(position, self.max_len)] + self.bias
    return new_state, logits

  def feed(self, state: int, tokens) -> tuple[int, np.ndarray]:
    """Feeds BOS then `tokens`; returns the log-softmax rows predicting each of `tokens` (and one more)."""
    rows, fed = [], [0] + list(tokens)
    for position, token in enumerate(fed):
      state, logits = self.step(state, token, position)
      rows.append(logits - np.logaddexp.reduce(logits))
    return state, np.stack(rows)

  def log_prob(self, state: int, tokens, first_free: int = 0) -> float:
    """Log-prob of output `tokens` (eos-terminated or full), counting positions from `first_free` on."""
    _, log_probs = self.feed(state, tokens)
    return float(sum(log_probs[j, t] for j, t in enumerate(tokens) if j >= first_free))

  def greedy(self, state: int, length: int, prefix=()) -> list[int]:
    out = list(prefix)
    while len(out) < length:
      if EOS in out:
        out.append(0)
        continue
      _, log_probs = self.feed(state, out)
      out.append(int(np.argmax(log_probs[len(out)])))
    return out


def _trim(tokens) -> tuple[int, ...]:
  tokens = [int(t) for t in tokens]
  return tuple(tokens[:tokens.index(EOS) + 1]) if EOS in tokens else tuple(tokens)


def _penalty(alpha: float, length: int) -> float:
  return ((5.0 + length) / 6.0) ** alpha


def _brute_force_top(model: ToyModel, state: int, max_len: int, k: int, alpha: float):
  """All eos-terminated sequences up to max_len, best k by log-prob / brevity penalty, ascending."""
  words = [t for t in range(V) if t != EOS]
  scored = []
  for n in range(1, max_len + 1):
    for body in itertools.product(words, repeat=n - 1):
      seq = body + (EOS,)
      scored.append((model.log_prob(state, seq) / _penalty(alpha, n), seq))
  scored.sort()
  return scored[-k:]


# ------------------------------------------------------------------------------------------------------------
# Helpers.
# ------------------------------------------------------------------------------------------------------------


def test_cache_helpers_skip_unbatched_leaves():
  cache = {'a': {'key': jnp.arange(6.).reshape(2, 3), 'cache_index': jnp.array(4)},
           'b': {'cache_index': jnp.array([1, 2])}, 'relpos': {'cached_bias': jnp.ones((1, 5))}}
  expanded = decoding.cache_map(functools.partial(decoding.flat_batch_beam_expand, beam_size=3), cache)
  np.testing.assert_array_equal(expanded['a']['key'], np.repeat(np.arange(6.).reshape(2, 3), 3, axis=0))
  assert expanded['a']['cache_index'].shape == ()
  np.testing.assert_array_equal(expanded['b']['cache_index'], [1, 1, 1, 2, 2, 2])
  assert expanded['relpos']['cached_bias'].shape == (1, 5)

  beams = decoding.cache_map(lambda x: decoding.unflatten_beam_dim(x, 2, 3), expanded)
  marked = decoding.cache_map(lambda x: x + jnp.arange(3).reshape((1, 3) + (1,) * (x.ndim - 2)), beams)
  gathered = decoding.gather_beams(marked, jnp.array([[2, 0], [1, 1]]))
  np.testing.assert_array_equal(gathered['b']['cache_index'], [[3, 1], [3, 3]])
  np.testing.assert_array_equal(gathered['a']['key'][0, 0], np.arange(3.) + 2)
  assert gathered['a']['cache_index'].shape == () and gathered['relpos']['cached_bias'].shape == (1, 5)
  with pytest.raises(ValueError, match='batch_size'):
    decoding.unflatten_beam_dim(jnp.zeros((5, 2)), 2, 3)


# ------------------------------------------------------------------------------------------------------------
# 1. Greedy decoding.
# ------------------------------------------------------------------------------------------------------------


def test_greedy_matches_step_by_step_argmax_and_pads_after_eos():
  length = 6
  model = ToyModel(seed=0, max_len=length, eos_boost_step=3)
  states = [0, 4]
  inputs = jnp.zeros((2, length), jnp.int32)
  seqs, log_probs = decoding.temperature_sample(inputs, model.cache(states), model.tokens_to_logits, EOS)
  assert seqs.shape == (2, 1, length) and log_probs.shape == (2, 1)
  for row, state in enumerate(states):
    expected = model.greedy(state, length)
    assert list(np.asarray(seqs[row, 0])) == expected
    end = expected.index(EOS)
    assert end <= 3 and not any(expected[end + 1:])
  np.testing.assert_array_equal(log_probs, 0.0)  # greedy with rescaled log-probs, as T5X

  _, raw = decoding.temperature_sample(inputs, model.cache(states), model.tokens_to_logits, EOS,
                                       rescale_log_probs=False)
  for row, state in enumerate(states):
    np.testing.assert_allclose(raw[row, 0], model.log_prob(state, _trim(seqs[row, 0])), rtol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# 2. Beam search.
# ------------------------------------------------------------------------------------------------------------


def test_beam_search_returns_true_top_k_by_penalised_score():
  # Tokens 0, 4, 5 are nearly impossible, so 6 beams cover every plausible prefix and the search is exact.
  length, beams, alpha = 3, 6, 0.6
  model = ToyModel(seed=1, max_len=length, implausible=(0, 4, 5))
  states = [0, 5]
  seqs, scores = decoding.beam_search(jnp.zeros((2, length), jnp.int32), model.cache(states),
                                      model.tokens_to_logits, EOS, num_decodes=beams, alpha=alpha)
  assert seqs.shape == (2, beams, length) and scores.shape == (2, beams)
  for row, state in enumerate(states):
    expected = _brute_force_top(model, state, length, beams, alpha)
    assert [_trim(s) for s in seqs[row]] == [seq for _, seq in expected]
    np.testing.assert_allclose(scores[row], [score for score, _ in expected], rtol=1e-5)
    for s in seqs[row]:
      tail = list(np.asarray(s))[len(_trim(s)):]
      assert not any(tail)


@pytest.mark.parametrize('beams', [1, 2])
def test_small_beams_score_their_sequences_and_sort_ascending(beams):
  length, alpha = 4, 0.6
  model = ToyModel(seed=2, max_len=length)
  states = [1, 3]
  seqs, scores = decoding.beam_search(jnp.zeros((2, length), jnp.int32), model.cache(states),
                                      model.tokens_to_logits, EOS, num_decodes=beams, alpha=alpha)
  assert seqs.shape == (2, beams, length)
  assert np.all(np.diff(np.asarray(scores), axis=1) >= 0)
  for row, state in enumerate(states):
    best_possible = _brute_force_top(model, state, length, 1, alpha)[0][0]
    for s, score in zip(seqs[row], scores[row]):
      seq = _trim(s)
      assert seq[-1] == EOS
      np.testing.assert_allclose(score, model.log_prob(state, seq) / _penalty(alpha, len(seq)), rtol=1e-5)
      assert score <= best_possible + 1e-5


def test_beam_search_without_finished_returns_live_beams():
  length = 2
  model = ToyModel(seed=3, max_len=length)
  model.table[:, EOS] -= 40.0  # eos is (almost) never chosen within 2 steps
  seqs, scores = decoding.beam_search(jnp.zeros((1, length), jnp.int32), model.cache([0]),
                                      model.tokens_to_logits, EOS, num_decodes=2)
  for s, score in zip(seqs[0], scores[0]):
    assert EOS not in list(np.asarray(s))
    np.testing.assert_allclose(score, model.log_prob(0, tuple(int(t) for t in s)), rtol=1e-5)  # raw log-prob


# ------------------------------------------------------------------------------------------------------------
# 3. Sampling.
# ------------------------------------------------------------------------------------------------------------


def _sample_fn(model, **kwargs):
  return jax.jit(lambda inputs, cache, rng: decoding.temperature_sample(
      inputs, cache, model.tokens_to_logits, EOS, decode_rng=rng, **kwargs))


def _outside_top2(model, state, seq) -> int:
  """How many positions of `seq` hold a token outside the two most likely ones."""
  _, log_probs = model.feed(state, seq)
  return sum(t not in np.argsort(log_probs[j])[-2:] for j, t in enumerate(seq))


def test_topk_sampling_stays_in_top_k():
  length = 5
  model = ToyModel(seed=4, max_len=length)
  states = [0, 2]
  inputs, cache = jnp.zeros((2, length), jnp.int32), model.cache(states)
  top2 = _sample_fn(model, num_decodes=4, temperature=5.0, topk=2)
  full = _sample_fn(model, num_decodes=4, temperature=5.0, topk=0)
  seen, violations_without_topk = set(), 0
  for seed in range(20):
    rng = jax.random.PRNGKey(seed)
    seqs, log_probs = top2(inputs, cache, rng)
    assert np.all(np.diff(np.asarray(log_probs), axis=1) >= 0)
    for row, state in enumerate(states):
      for s in seqs[row]:
        seq = _trim(s)
        assert _outside_top2(model, state, seq) == 0
        seen.add((state, seq[0]))
    unrestricted, _ = full(inputs, cache, rng)
    violations_without_topk += sum(_outside_top2(model, state, _trim(s))
                                   for row, state in enumerate(states) for s in unrestricted[row])
  assert len(seen) == 4  # both top-2 first tokens of both rows were drawn: this is sampling, not argmax
  assert violations_without_topk > 0  # the same check catches tokens outside the top 2


def test_topk_log_probs_are_rescaled_or_raw():
  length = 4
  model = ToyModel(seed=5, max_len=length)
  inputs, cache = jnp.zeros((1, length), jnp.int32), model.cache([3])
  rng = jax.random.PRNGKey(7)
  seqs, rescaled = _sample_fn(model, temperature=2.0, topk=2)(inputs, cache, rng)
  seqs_raw, raw = _sample_fn(model, temperature=2.0, topk=2, rescale_log_probs=False)(inputs, cache, rng)
  np.testing.assert_array_equal(seqs, seqs_raw)
  seq = _trim(seqs[0, 0])
  np.testing.assert_allclose(raw[0, 0], model.log_prob(3, seq), rtol=1e-5)
  _, log_probs = model.feed(3, seq)
  expected = 0.0
  for j, t in enumerate(seq):
    scaled = log_probs[j] / 2.0  # log-softmax differs from logits by a constant, which cancels below
    kept = np.where(scaled >= np.sort(scaled)[-2], scaled, -1e7)
    expected += kept[t] - np.logaddexp.reduce(kept)
  np.testing.assert_allclose(rescaled[0, 0], expected, rtol=1e-5)


def test_small_topp_and_zero_temperature_are_greedy():
  length = 5
  model = ToyModel(seed=6, max_len=length)
  states = [0, 6]
  inputs, cache = jnp.zeros((2, length), jnp.int32), model.cache(states)
  greedy = np.array([model.greedy(s, length) for s in states])
  samplers = (_sample_fn(model, num_decodes=2, topp=0.01, topk=0),
              _sample_fn(model, num_decodes=2, temperature=1e-5, topk=0),
              _sample_fn(model, temperature=jnp.array([1e-5, 1e-5]), topk=0))
  for seed, sampler in itertools.product(range(3), samplers):
    out, _ = sampler(inputs, cache, jax.random.PRNGKey(seed))
    np.testing.assert_array_equal(out, np.repeat(greedy[:, None], out.shape[1], axis=1))
  wide_sampler = _sample_fn(model, num_decodes=8, topp=1.0, topk=0, temperature=3.0)
  wide, _ = wide_sampler(inputs, cache, jax.random.PRNGKey(0))
  assert len({_trim(s) for s in wide[0]}) > 1


def test_bad_sampling_arguments_raise():
  model = ToyModel(seed=0, max_len=3)
  args = (jnp.zeros((2, 3), jnp.int32), model.cache([0, 1]), model.tokens_to_logits, EOS)
  with pytest.raises(ValueError, match='topk=3 and topp=0.9'):
    decoding.temperature_sample(*args, topk=3, topp=0.9)
  with pytest.raises(ValueError, match='max_decode_steps=4'):
    decoding.temperature_sample(*args, max_decode_steps=4)
  with pytest.raises(ValueError, match='temperature'):
    decoding.temperature_sample(*args, temperature=jnp.ones((3,)))
  with pytest.raises(ValueError, match='topk=7'):
    decoding.temperature_sample(*args, topk=7)
  with pytest.raises(ValueError, match='num_decodes=0'):
    decoding.beam_search(*args, num_decodes=0)


# ------------------------------------------------------------------------------------------------------------
# 4. Forced prefixes, prefilled caches, step limits.
# ------------------------------------------------------------------------------------------------------------

PROMPTS = [[0, 3, 2, 0, 0, 0], [0, 5, 0, 0, 0, 0]]  # right-shifted: outputs start with [3, 2] and [5]
PROMPT_STATES = [2, 4]


def _prefilled_cache(model, initial_index):
  """The toy cache after feeding PROMPTS[:, :initial_index] (BOS included)."""
  states = [model.feed(s, p[1:i])[0] for s, p, i in zip(PROMPT_STATES, PROMPTS, initial_index)]
  return model.cache(states, positions=initial_index, vector_cache_index=True)


def test_forced_prefix_is_copied_and_not_scored():
  length = len(PROMPTS[0])
  model = ToyModel(seed=7, max_len=length)
  seqs, log_probs = decoding.temperature_sample(
      jnp.array(PROMPTS), model.cache(PROMPT_STATES), model.tokens_to_logits, EOS, rescale_log_probs=False)
  for row, (state, prompt) in enumerate(zip(PROMPT_STATES, PROMPTS)):
    prefix = [t for t in prompt[1:] if t]
    assert list(np.asarray(seqs[row, 0])) == model.greedy(state, length, prefix=prefix)
    np.testing.assert_allclose(log_probs[row, 0], model.log_prob(state, _trim(seqs[row, 0]), len(prefix)),
                               rtol=1e-5)

  limited, _ = decoding.temperature_sample(
      jnp.array(PROMPTS), model.cache(PROMPT_STATES), model.tokens_to_logits, EOS, max_decode_steps=2)
  for row, prompt in enumerate(PROMPTS):
    filled = min(length, np.count_nonzero(prompt) + 2)
    np.testing.assert_array_equal(limited[row, 0, :filled], seqs[row, 0, :filled])
    assert not np.any(limited[row, 0, filled:])


def test_initial_index_equals_decoding_the_prefix_from_scratch():
  length = len(PROMPTS[0])
  model = ToyModel(seed=8, max_len=length)
  initial_index = [2, 1]  # each row's last forced slot: decoding resumes by feeding that token
  inputs = jnp.array(PROMPTS)
  scratch = decoding.temperature_sample(inputs, model.cache(PROMPT_STATES), model.tokens_to_logits, EOS,
                                        num_decodes=2, rescale_log_probs=False)
  prefilled = _prefilled_cache(model, initial_index)
  resumed = decoding.temperature_sample(inputs, prefilled, model.tokens_to_logits, EOS, num_decodes=2,
                                        rescale_log_probs=False, initial_index=jnp.array(initial_index))
  np.testing.assert_array_equal(resumed[0], scratch[0])
  np.testing.assert_allclose(resumed[1], scratch[1], rtol=1e-5)

  beam_scratch = decoding.beam_search(inputs, model.cache(PROMPT_STATES), model.tokens_to_logits, EOS,
                                      num_decodes=3)
  beam_resumed = decoding.beam_search(inputs, prefilled, model.tokens_to_logits, EOS, num_decodes=3,
                                      initial_index=jnp.array(initial_index))
  np.testing.assert_array_equal(beam_resumed[0], beam_scratch[0])
  np.testing.assert_allclose(beam_resumed[1], beam_scratch[1], rtol=1e-5)
  for row, prompt in enumerate(PROMPTS):
    prefix = [t for t in prompt[1:] if t]
    np.testing.assert_array_equal(beam_resumed[0][row, :, :len(prefix)], np.tile(prefix, (3, 1)))


# ------------------------------------------------------------------------------------------------------------
# 5. jit.
# ------------------------------------------------------------------------------------------------------------


def test_jit_gives_the_same_results():
  length = 5
  model = ToyModel(seed=9, max_len=length)
  inputs = jnp.array([row[:length] for row in PROMPTS])
  cache = flax.core.freeze(model.cache(PROMPT_STATES))  # a FrozenDict cache also works
  rng = jax.random.PRNGKey(3)
  sample = functools.partial(decoding.temperature_sample, tokens_to_logits=model.tokens_to_logits, eos_id=EOS,
                             num_decodes=3, topk=0, temperature=1.5)
  beam = functools.partial(decoding.beam_search, tokens_to_logits=model.tokens_to_logits, eos_id=EOS,
                           num_decodes=3)
  runs = ((sample(inputs, cache, decode_rng=rng), jax.jit(sample)(inputs, cache, decode_rng=rng)),
          (beam(inputs, cache), jax.jit(beam)(inputs, cache)))
  for eager, jitted in runs:
    np.testing.assert_array_equal(jitted[0], eager[0])
    np.testing.assert_allclose(jitted[1], eager[1], rtol=1e-6)
