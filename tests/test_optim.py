"""Optimisation pieces: T5X learning-rate factors, Adafactor vs a numpy T5X reference, trainable splitting."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning.runtime import optim
from prompt_tuning.runtime.schedules import create_learning_rate_scheduler

# ----------------------------------------------------------------------------------------------------------
# Learning-rate schedules.


def _values(fn, steps):
  return [float(fn(step)) for step in steps]


def test_default_warmup_then_rsqrt():
  fn = create_learning_rate_scheduler()  # constant * linear_warmup * rsqrt_decay, base 0.5, warmup 1000
  got = _values(fn, [0, 500, 1000, 4000])
  want = [1e-8, 0.5 * 0.5 / math.sqrt(1000), 0.5 / math.sqrt(1000), 0.5 / math.sqrt(4000)]
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_constant_is_prompt_tuning_default():
  fn = create_learning_rate_scheduler(factors='constant', base_learning_rate=0.3)
  np.testing.assert_allclose(_values(fn, [0, 1_100_000]), [0.3, 0.3], rtol=1e-7)
  assert fn(3).dtype == jnp.float32


def test_linear_decay_and_min_clamp():
  fn = create_learning_rate_scheduler(factors='linear_decay', base_learning_rate=1.0, warmup_steps=10,
                                      decay_factor=0.1, min_learning_rate=1e-4)
  np.testing.assert_allclose(_values(fn, [5, 10, 15, 30]), [0.5, 1.0, 0.5, 1e-4], rtol=1e-6)


def test_rsqrt_normalized_decay_every_and_cosine():
  normalized = create_learning_rate_scheduler(factors='constant * rsqrt_normalized_decay',
                                              base_learning_rate=2.0, warmup_steps=100)
  np.testing.assert_allclose(_values(normalized, [50, 400]), [2.0, 1.0], rtol=1e-6)
  every = create_learning_rate_scheduler(factors='constant*decay_every', base_learning_rate=1.0,
                                         decay_factor=0.5, steps_per_decay=10)
  np.testing.assert_allclose(_values(every, [9, 10, 25]), [1.0, 0.5, 0.25], rtol=1e-6)
  cosine = create_learning_rate_scheduler(factors='cosine_decay', warmup_steps=10, steps_per_cycle=100)
  np.testing.assert_allclose(_values(cosine, [5, 35, 60, 110]),
                             [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 1.0], rtol=1e-6)


def test_step_offset_and_jit():
  base = create_learning_rate_scheduler(warmup_steps=100)
  shifted = create_learning_rate_scheduler(warmup_steps=100, step_offset=1000)
  np.testing.assert_allclose(float(jax.jit(shifted)(jnp.int32(1050))), float(base(50)), rtol=1e-6)
  assert float(shifted(10)) == float(base(0))


def test_bad_factor_and_bad_lengths_raise():
  with pytest.raises(ValueError, match=r"\['lineer_warmup'\].*linear_warmup, linear_decay"):
    create_learning_rate_scheduler(factors='constant * lineer_warmup')
  with pytest.raises(ValueError, match='warmup_steps=0'):
    create_learning_rate_scheduler(factors='constant * linear_warmup', warmup_steps=0)
  with pytest.raises(ValueError, match='steps_per_cycle'):
    create_learning_rate_scheduler(factors='cosine_decay', steps_per_cycle=0)


# ----------------------------------------------------------------------------------------------------------
# Adafactor against a straight numpy implementation of T5X's update.


def _t5x_adafactor_reference(params, grads_per_step, start_step, lr, *, factored, weight_decay=1e-5):
  """T5X Adafactor (no param scaling, clip 1, decay 0.8, eps1 1e-30) in float32 numpy, from its formulas."""
  params = {name: value.copy() for name, value in params.items()}
  v = {name: None for name in params}
  for i, grads in enumerate(grads_per_step):
    rho = np.float32(1) - (np.float32(start_step + i) + np.float32(1))**np.float32(-0.8)
    for name, p in params.items():
      g = grads[name]
      g2 = g * g + np.float32(1e-30)
      if name in factored:
        small, large = np.argsort(p.shape)[-2:]
        row, col = v[name] if v[name] is not None else (0.0, 0.0)
        row = rho * row + (1 - rho) * g2.mean(axis=large)  # averaged over the larger dim
        col = rho * col + (1 - rho) * g2.mean(axis=small)
        v[name] = (row, col)
        v_hat = np.expand_dims(row, large) * np.expand_dims(col, small) / row.mean()
      else:
        v[name] = v_hat = rho * (0.0 if v[name] is None else v[name]) + (1 - rho) * g2
      y = g / np.sqrt(v_hat)
      y = y / max(1.0, np.sqrt(np.mean(y * y)))
      params[name] = (1 - np.float32(weight_decay)) * p - np.float32(lr) * y
  return params


def _problem(steps=3):
  rng = np.random.default_rng(1)
  params = {'prompt': rng.normal(size=(100, 16)).astype(np.float32),
            'kernel': (0.05 * rng.normal(size=(256, 200))).astype(np.float32)}
  row_scale = np.exp(rng.normal(size=(256, 1)))  # uneven rows make the factored estimate matter
  grads = [{'prompt': rng.normal(size=(100, 16)).astype(np.float32),
            'kernel': (row_scale * rng.normal(size=(256, 200))).astype(np.float32)} for _ in range(steps)]
  return params, grads


def _run(tx, params, grads, start_step=None):
  state = tx.init(params)
  if start_step is not None:
    state = optim.set_optimizer_step(state, start_step)
  update = jax.jit(tx.update)
  for g in grads:
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


@pytest.mark.parametrize('start_step', [0, 1_100_000])
def test_adafactor_matches_t5x_reference(start_step):
  params, grads = _problem()
  got, state = _run(optim.adafactor(0.3), params, grads, start_step)
  want = _t5x_adafactor_reference(params, grads, start_step, 0.3, factored={'kernel'})
  for name in params:
    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)
  assert int(state[0].count) == start_step + 3
  assert state[0].v['prompt'].shape == (100, 16) and state[0].v_row['kernel'].shape == (200,)
  # The restored step changes the result, so setting it is what makes the two cases agree with T5X.
  other = _t5x_adafactor_reference(params, grads, 1_100_000 - start_step, 0.3, factored={'kernel'})
  assert not np.allclose(got['kernel'], other['kernel'], rtol=1e-5, atol=1e-6)


def test_factor_rule_can_keep_a_full_second_moment():
  params, grads = _problem(steps=2)
  tx = optim.adafactor(0.3, factor_rule=lambda path, leaf: path != 'kernel')
  got, _ = _run(tx, params, grads)
  want = _t5x_adafactor_reference(params, grads, 0, 0.3, factored=set())
  np.testing.assert_allclose(got['kernel'], want['kernel'], rtol=1e-5, atol=1e-6)


def test_default_factoring_follows_t5x_heuristic_for_long_prompts():
  state = optim.adafactor(0.3).init({'prompt': jnp.zeros((150, 256)), 'short': jnp.zeros((100, 256))})
  assert state[0].v_row['prompt'].shape == (150,) and state[0].v['prompt'].shape == (1,)
  assert state[0].v['short'].shape == (100, 256)


def test_weight_decay_is_not_scaled_by_learning_rate():
  params, grads = _problem(steps=1)
  got, _ = _run(optim.adafactor(0.0, weight_decay_rate=0.01), params, grads)
  for name in params:
    np.testing.assert_allclose(got[name], 0.99 * params[name], rtol=1e-6)


def test_clipping_caps_update_rms_and_schedule_sees_restored_step():
  params, grads = _problem(steps=1)
  params = {'prompt': params['prompt']}
  grads = [{'prompt': grads[0]['prompt']}]

  def update_rms(**kwargs):
    got, _ = _run(optim.adafactor(weight_decay_rate=None, **kwargs), params, grads, 1_100_000)
    return float(np.sqrt(np.mean((got['prompt'] - params['prompt'])**2)))

  # Fresh v at step 1.1M is (1-ρ)·g², so the raw update has RMS 1/√(1-ρ) ≈ 262 before clipping.
  assert update_rms(learning_rate=1.0, clipping_threshold=None) > 100
  np.testing.assert_allclose(update_rms(learning_rate=1.0), 1.0, rtol=1e-5)
  warmup = create_learning_rate_scheduler('constant * linear_warmup', base_learning_rate=0.5,
                                          warmup_steps=2_200_000)
  np.testing.assert_allclose(update_rms(learning_rate=warmup), 0.25, rtol=1e-5)


def test_set_optimizer_step_errors():
  params = {'w': jnp.zeros(3)}
  with pytest.raises(ValueError, match='no `count`'):
    optim.set_optimizer_step(optax.sgd(0.1).init(params), 5)
  with pytest.raises(ValueError, match='int32'):
    optim.set_optimizer_step(optim.adafactor(0.1).init(params), -1)


# ----------------------------------------------------------------------------------------------------------
# Trainable / frozen split.


def _params():
  rng = np.random.default_rng(2)
  return {
      'encoder': {'prompt': {'prompt': {'prompt': jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}},
                  'layers_0': {'attention': {'query': {'kernel': jnp.asarray(rng.normal(size=(3, 3)))}}}},
      'decoder': {'logits_dense': {'kernel': jnp.asarray(rng.normal(size=(3, 5)))}},
  }


def test_split_merge_round_trip_and_mask():
  params = _params()
  trainable, frozen = optim.split_trainable(params, ['.*/prompt/.*'])
  prompt = params['encoder']['prompt']['prompt']['prompt']
  assert trainable == {'encoder': {'prompt': {'prompt': {'prompt': prompt}}}}
  assert set(frozen) == {'encoder', 'decoder'} and 'prompt' not in frozen['encoder']
  merged = optim.merge_trainable(trainable, frozen)
  assert jax.tree_util.tree_structure(merged) == jax.tree_util.tree_structure(params)
  assert all(a is b for a, b in zip(jax.tree_util.tree_leaves(merged), jax.tree_util.tree_leaves(params)))
  mask = optim.trainable_mask(params, ['.*/prompt/.*', 'decoder/.*'])
  assert mask['encoder']['prompt']['prompt']['prompt'] and mask['decoder']['logits_dense']['kernel']
  assert not mask['encoder']['layers_0']['attention']['query']['kernel']


def test_grad_and_optimizer_take_the_trainable_subtree():
  trainable, frozen = optim.split_trainable(_params(), ['.*prompt.*'])

  def loss(t):
    p = optim.merge_trainable(t, frozen)
    kernel = p['encoder']['layers_0']['attention']['query']['kernel']
    return jnp.sum(p['encoder']['prompt']['prompt']['prompt'] @ kernel)

  grads = jax.grad(loss)(trainable)
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(trainable)
  tx = optim.adafactor(0.3)
  updates, _ = tx.update(grads, tx.init(trainable), trainable)
  new = optax.apply_updates(trainable, updates)
  assert not np.allclose(new['encoder']['prompt']['prompt']['prompt'],
                         trainable['encoder']['prompt']['prompt']['prompt'])


def test_split_errors():
  params = _params()
  with pytest.raises(ValueError, match=r"\['encoder/prompts'\].*encoder/prompt/prompt/prompt"):
    optim.split_trainable(params, ['encoder/prompts'])
  with pytest.raises(ValueError, match='No parameter matches'):
    optim.trainable_mask(params, [])
  with pytest.raises(TypeError, match='wrap it in a list'):
    optim.split_trainable(params, '.*prompt.*')
  trainable, frozen = optim.split_trainable(params, ['.*prompt.*'])
  with pytest.raises(ValueError, match='both trainable and frozen'):
    optim.merge_trainable(trainable, params)
