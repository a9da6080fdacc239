"""The README's Python API walk-through, run on the real tiny T5X checkpoint and T5 vocabulary from ../shared."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import seqio

from prompt_tuning import prompts
from prompt_tuning.family import PromptFamily
from prompt_tuning.models import EncoderDecoder, get_config
from prompt_tuning.runtime.checkpoints import load_variable
from prompt_tuning.runtime.checkpoints.restore import load_params, merge_checkpoint_into
from prompt_tuning.runtime.models import EncoderDecoderModel


def test_readme_python_api(tiny_t5x_checkpoint, t5_vocab_path):
  vocab = seqio.SentencePieceVocabulary(str(t5_vocab_path), extra_ids=100)
  ckpt_params, step = load_params(str(tiny_t5x_checkpoint))
  assert step == 3
  embeddings = load_variable(str(tiny_t5x_checkpoint), "token_embedder/embedding")
  init = prompts.from_class_labels(embeddings, vocab, ["positive", "negative"])
  family = PromptFamily(prompt=lambda: prompts.PromptedInputs(prompts.Prompt(5, initializer=init)))
  module = EncoderDecoder(get_config("tiny"), family)
  model = EncoderDecoderModel(module, vocab)
  shapes = {"encoder_input_tokens": (2, 8), "decoder_input_tokens": (2, 3)}
  fresh = model.get_initial_variables(jax.random.PRNGKey(0), shapes)["params"]
  params = merge_checkpoint_into(jax.tree_util.tree_map(np.asarray, nn.meta.unbox(fresh)), ckpt_params,
                                 assignment_map=((r".*prompt.*", None),))
  prompt = np.asarray(params["encoder"]["prompt"]["prompt"]["prompt"])
  np.testing.assert_allclose(prompt[0], embeddings[[1465]].mean(0), rtol=1e-6)  # "positive" -> [1465]
  np.testing.assert_allclose(prompt[1], embeddings[[2841]].mean(0), rtol=1e-6)  # "negative" -> [2841]
  np.testing.assert_array_equal(params["token_embedder"]["embedding"], embeddings)

  rows = [list(vocab.encode(t)) + [1] for t in ("sst2 sentence: great", "bad")]
  enc = np.array([r + [0] * (12 - len(r)) for r in rows], np.int32)
  tgt = np.array([[1465, 1, 0], [2841, 1, 0]], np.int32)
  batch = {"encoder_input_tokens": enc, "decoder_target_tokens": tgt,
           "decoder_input_tokens": np.pad(tgt, ((0, 0), (1, 0)))[:, :-1], "decoder_loss_weights": (tgt > 0) * 1.0}
  logits = model.compute_logits(params, batch)
  assert logits.shape == (2, 3, 32128) and logits.dtype == jnp.float32
  loss, metrics = model.loss_fn(params, batch, dropout_rng=None)
  scores = model.score_batch(params, batch)
  # With z-loss off, the summed loss is minus the summed log-likelihood.
  no_z = EncoderDecoderModel(module, vocab, z_loss=0.0).loss_fn(params, batch, None)[0]
  np.testing.assert_allclose(float(no_z), -float(scores.sum()), rtol=1e-4)
  assert float(loss) > float(no_z) and 0.0 <= float(metrics["accuracy"]) <= 1.0
  predictions = model.predict_batch(params, batch)
  assert predictions.shape == (2, 3)
