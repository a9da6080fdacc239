"""Instance-wise prompts: pooled (IDPG, PHM), encoder first pass, token-level queries."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import prompts
from prompt_tuning.families import count, instance
from prompt_tuning.family import PromptFamily
from prompt_tuning.models import EncoderDecoder

from test_families_utils import BATCH, assert_trains_only_family, config, init, logits

P, H, D = 3, 8, 16  # prompt length, generator bottleneck, model width
REGEXES = [".*/prompt/.*"]  # the default PROMPT_REGEX covers the generator (encoder/prompt/prompt/generator/...)
GENERATORS = {
    "pooled": lambda: instance.PooledGenerator(P, H),
    "pooled_phm": lambda: instance.PooledGenerator(P, H, phm=2),
    "encoder": lambda: instance.PooledGenerator(P, H, source="encoder"),
    "token": lambda: instance.TokenQueryGenerator(P, H),
}


def model(kind: str, combine: str = "add") -> EncoderDecoder:
  factory = lambda: prompts.PromptedInputs(instance.InstancePrompt(GENERATORS[kind](), P, combine))
  return EncoderDecoder(config(), PromptFamily(factory, encoder_first_pass=kind == "encoder"))


def generated(module: EncoderDecoder, params: dict, tokens: jax.Array) -> np.ndarray:
  """The prompt module's output [B, P, d] for `tokens`."""
  def run(m, t):
    x = m.token_embedder(t)
    inputs = {"first_pass": m.encoder(t, use_prompt=False)} if m.family.encoder_first_pass else {}
    return m.encoder.prompt.prompt(t, x, **inputs)
  return np.asarray(module.apply({"params": params}, tokens, method=run))


def with_nonzero_outputs(params: dict, seed: int = 1) -> dict:
  """Randomise the generator (its output layer starts at zero) so that prompts differ between examples."""
  leaves, tree = jax.tree_util.tree_flatten(params["encoder"]["prompt"]["prompt"]["generator"])
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  noisy = [x + 0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
  gen = jax.tree_util.tree_unflatten(tree, noisy)
  return {**params, "encoder": {**params["encoder"], "prompt": {"prompt": {
      **params["encoder"]["prompt"]["prompt"], "generator": gen}}}}


def expected_trainable(kind: str) -> int:
  d, task = D, P * D
  dense = lambda i, o: i * o + o
  if kind in ("pooled", "encoder"):
    return task + dense(d, H) + dense(H, P * d)
  if kind == "pooled_phm":  # n^3 rule + in*out/n factors + bias, per layer (n = 2)
    return task + (8 + d * H // 2 + H) + (8 + H * P * d // 2 + P * d)
  return task + P * d + 3 * dense(d, H) + dense(H, d)


@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_shapes_counts_instance_dependence_and_padding(kind):
  module = model(kind)
  params = init(module)
  tokens = BATCH["encoder_input_tokens"]
  out = generated(module, params, tokens)
  assert out.shape == (4, P, D)
  # The generator's output layer starts at zero: every example starts with the task prompt.
  np.testing.assert_allclose(out, np.broadcast_to(params["encoder"]["prompt"]["prompt"]["prompt"], out.shape),
                             atol=1e-6)
  assert count.parameter_counts(module, REGEXES)[0] == expected_trainable(kind)
  # Once trained (here: randomised), each example gets its own prompt; padding changes nothing.
  params = with_nonzero_outputs(params)
  out = generated(module, params, tokens.at[3].set(tokens[0]))
  assert not np.allclose(out[0], out[1], atol=1e-4)
  np.testing.assert_allclose(out[3], out[0], atol=1e-6)
  padded = generated(module, params, jnp.pad(tokens, ((0, 0), (0, 5))))
  np.testing.assert_allclose(padded[:3], out[:3], atol=1e-5)


def test_concat_puts_the_instance_prompt_after_the_task_prompt():
  module = model("token", combine="concat")
  params = with_nonzero_outputs(init(module))
  out = generated(module, params, BATCH["encoder_input_tokens"])
  assert out.shape == (4, 2 * P, D)
  np.testing.assert_array_equal(out[:, :P], np.broadcast_to(params["encoder"]["prompt"]["prompt"]["prompt"],
                                                            (4, P, D)))
  assert logits(module, params).shape == (4, 4, 64)
  with pytest.raises(ValueError, match="equal lengths: task prompt 2, generator 3"):
    instance.InstancePrompt(instance.TokenQueryGenerator(P), 2, "add")


def test_phm_kernel_is_a_sum_of_kronecker_products():
  layer = instance.PHMDense(6, 2)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
  variables = layer.init(jax.random.PRNGKey(1), x)
  p = jax.tree_util.tree_map(np.asarray, variables["params"])
  rule, factors = p["phm_rule"].value, p["kernel"].value
  kernel = sum(np.kron(rule[i], factors[i]) for i in range(2))
  np.testing.assert_allclose(layer.apply(variables, x), np.asarray(x) @ kernel + p["bias"].value, atol=1e-5)
  with pytest.raises(ValueError, match="divisible by n"):
    instance.PHMDense(5, 2).init(jax.random.PRNGKey(1), x)


def test_encoder_source_needs_the_first_pass_and_costs_an_encoder_pass():
  factory = lambda: prompts.PromptedInputs(instance.InstancePrompt(GENERATORS["encoder"](), P))
  with pytest.raises(ValueError, match="encoder_first_pass = True"):
    init(EncoderDecoder(config(), PromptFamily(factory)))
  pooled, encoder = (count.forward_flops(model(kind), 1, 16, 4) for kind in ("pooled", "encoder"))
  assert encoder - pooled > 0.25 * pooled  # one more encoder pass over the 16 input tokens


def test_token_generator_trains_alone():  # the pooled generator (encoder source, PHM): test_families_cli
  assert_trains_only_family(model("token"), REGEXES)
