"""T5X cross entropy: numpy references, the custom gradient, label smoothing, LNFs, metrics, scores."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.runtime import losses

B, L, V = 3, 5, 11


@pytest.fixture(name='batch')
def fixture_batch():
  rng = np.random.default_rng(0)
  logits = rng.normal(scale=3.0, size=(B, L, V)).astype(np.float32)
  targets = rng.integers(1, V, size=(B, L)).astype(np.int32)
  lengths = np.array([5, 3, 1])
  weights = (np.arange(L)[None, :] < lengths[:, None]).astype(np.float32)
  targets = targets * weights.astype(np.int32)  # padding id 0 where the weight is 0
  return logits, targets, weights


def _np_token_losses(logits, targets, label_smoothing, z_loss):
  """Per-token loss and z-loss term, written from the T5X formulas in float64."""
  logits = logits.astype(np.float64)
  log_z = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
  log_probs = logits - log_z[..., None]
  confidence = 1.0 - label_smoothing
  low = label_smoothing / (V - 1)
  soft = np.where(np.arange(V) == targets[..., None], confidence, low)
  constant = -(confidence * np.log(confidence) + (V - 1) * low * np.log(low + 1e-20))
  z_term = z_loss * log_z**2
  return -(soft * log_probs).sum(-1) + z_term - constant, z_term


def test_loss_is_weighted_token_sum_like_numpy(batch):
  logits, targets, weights = batch
  loss, z_sum, weight_sum = losses.compute_weighted_cross_entropy(
      jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights), label_smoothing=0.1, z_loss=1e-2)
  tok, z_term = _np_token_losses(logits, targets, 0.1, 1e-2)
  np.testing.assert_allclose(loss, (tok * weights).sum(), rtol=1e-5)
  np.testing.assert_allclose(z_sum, (z_term * weights).sum(), rtol=1e-5)
  assert float(weight_sum) == weights.sum()


def test_no_weights_sums_every_token(batch):
  logits, targets, _ = batch
  loss, _, weight_sum = losses.compute_weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(targets))
  np.testing.assert_allclose(loss, _np_token_losses(logits, targets, 0.0, 0.0)[0].sum(), rtol=1e-5)
  assert float(weight_sum) == B * L


def test_custom_vjp_matches_autodiff_of_plain_formula(batch):
  logits, targets, weights = batch
  soft = jnp.where(jnp.arange(V) == targets[..., None], 0.9, 0.1 / (V - 1))
  z_coeff = 0.05

  def custom(x):
    return jnp.sum(losses.cross_entropy_with_logits(x, soft, z_coeff)[0] * weights)

  def plain(x):
    log_z = jax.nn.logsumexp(x, axis=-1)
    token = -jnp.sum(soft * (x - log_z[..., None]), -1) + z_coeff * log_z**2
    return jnp.sum(token * weights)

  np.testing.assert_allclose(custom(logits), plain(logits), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(custom)(logits), jax.grad(plain)(logits), rtol=1e-5, atol=1e-6)


def test_z_loss_coefficient_gets_no_gradient_and_dtype_is_kept(batch):
  logits, targets, _ = batch
  onehot = jax.nn.one_hot(targets, V)
  grad_z = jax.grad(lambda z: jnp.sum(losses.cross_entropy_with_logits(logits, onehot, z)[0]))(0.3)
  assert float(grad_z) == 0.0
  bf16_logits = jnp.asarray(logits, jnp.bfloat16)
  loss, _ = losses.cross_entropy_with_logits(bf16_logits, onehot, 1e-4)
  grad = jax.grad(lambda x: jnp.sum(losses.cross_entropy_with_logits(x, onehot, 1e-4)[0]))(bf16_logits)
  assert loss.dtype == jnp.float32 and grad.dtype == jnp.bfloat16


def test_label_smoothing_constant_makes_perfect_prediction_zero(batch):
  _, targets, _ = batch
  smoothing = 0.2
  soft = np.where(np.arange(V) == targets[..., None], 1.0 - smoothing, smoothing / (V - 1))
  perfect_logits = jnp.asarray(np.log(soft), jnp.float32)  # softmax(perfect_logits) == soft targets
  loss, _, _ = losses.compute_weighted_cross_entropy(perfect_logits, jnp.asarray(targets),
                                                     label_smoothing=smoothing)
  np.testing.assert_allclose(loss, 0.0, atol=1e-4)
  worse, _, _ = losses.compute_weighted_cross_entropy(perfect_logits * 2, jnp.asarray(targets),
                                                      label_smoothing=smoothing)
  assert float(worse) > 0.1


def test_loss_normalizing_factor_variants(batch):
  logits, targets, weights = batch
  tok = _np_token_losses(logits, targets, 0.0, 0.0)[0]
  total = (tok * weights).sum()

  def run(lnf, w=weights):
    return float(losses.compute_weighted_cross_entropy(
        jnp.asarray(logits), jnp.asarray(targets), None if w is None else jnp.asarray(w),
        loss_normalizing_factor=lnf)[0])

  np.testing.assert_allclose(run(2.5), total / 2.5, rtol=1e-5)
  np.testing.assert_allclose(run('NUM_REAL_TARGET_TOKENS'), total / weights.sum(), rtol=1e-5)
  np.testing.assert_allclose(run('num_total_target_tokens'), total / (B * L), rtol=1e-5)
  per_sequence_means = (tok * weights).sum(-1) / weights.sum(-1)
  average = losses.SpecialLossNormalizingFactor.AVERAGE_PER_SEQUENCE
  np.testing.assert_allclose(run(average), per_sequence_means.mean(), rtol=1e-5)
  # Without weights the special factors derive them from non-padding targets.
  np.testing.assert_allclose(run('NUM_REAL_TARGET_TOKENS', w=None), total / weights.sum(), rtol=1e-5)
  with pytest.raises(ValueError, match='AVERAGE_PER_SEQUENCE'):
    run('PER_TOKEN')


def test_average_per_sequence_with_packed_segments():
  weights = jnp.array([[1., 1., 1., 1., 0.], [1., 1., 1., 1., 1.]])
  segment_ids = jnp.array([[1, 1, 1, 2, 0], [1, 2, 2, 2, 2]])
  factor, new_weights = losses.get_loss_normalizing_factor_and_weights(
      'AVERAGE_PER_SEQUENCE',
      {'decoder_target_tokens': segment_ids, 'decoder_loss_weights': weights,
       'decoder_segment_ids': segment_ids})
  np.testing.assert_allclose(new_weights, [[1 / 3, 1 / 3, 1 / 3, 1, 0], [1, .25, .25, .25, .25]], rtol=1e-6)
  np.testing.assert_allclose(factor, 4.0, rtol=1e-6)


def test_base_metrics(batch):
  logits, targets, weights = batch
  loss, z_sum, _ = losses.compute_weighted_cross_entropy(
      jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights), z_loss=1e-2)
  metrics = losses.compute_base_metrics(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights), loss,
                                        z_sum)
  correct = (logits.argmax(-1) == targets) * weights
  n_real = weights.sum()
  expected = {
      'accuracy': correct.sum() / n_real,
      'loss': loss,
      'loss_per_nonpadding_target_token': loss / n_real,
      'loss_per_all_target_tokens': loss / (B * L),
      'z_loss': z_sum,
      'z_loss_per_all_target_tokens': z_sum / (B * L),
      'cross_ent_loss': loss - z_sum,
      'cross_ent_loss_per_all_target_tokens': (loss - z_sum) / (B * L),
      'non_padding_fraction/loss_weights': n_real / (B * L),
  }
  assert set(metrics) == set(expected)
  for name, value in expected.items():
    np.testing.assert_allclose(metrics[name], value, rtol=1e-5, err_msg=name)
  assert 'z_loss' not in losses.compute_base_metrics(logits, targets, None, loss, None)


def test_token_log_likelihoods_have_no_z_loss_or_smoothing(batch):
  logits, targets, weights = batch
  scores = losses.token_log_likelihoods(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
  log_probs = logits - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True))
  expected = (np.take_along_axis(log_probs, targets[..., None], -1)[..., 0] * weights).sum(-1)
  assert scores.shape == (B,)
  np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_shape_and_smoothing_errors(batch):
  logits, targets, _ = batch
  with pytest.raises(ValueError, match='one more dim'):
    losses.compute_weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(targets[0]))
  with pytest.raises(ValueError, match='label_smoothing'):
    losses.compute_weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), label_smoothing=1.0)
