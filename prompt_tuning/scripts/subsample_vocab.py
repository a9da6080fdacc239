r"""Write a prompt file made of sampled vocabulary embeddings (the reference's `subsample_vocab`).

  python -m prompt_tuning.scripts.subsample_vocab --checkpoint_dir=gs://.../checkpoint_1100000 \
    --prompt_length=100 --population_size=5000 --seed=42 --output_path=prompt_init.npy

The rows are drawn from the first `--population_size` rows of the embedding table (all rows when ≤ 0), exactly as
the `from_sampled_vocab` initialiser draws them: without replacement unless the prompt is longer than the
population. The file feeds `prompts/from_file.gin` (`PROMPT_FILE`). Deliberate differences from the reference
script: `--embeddings_path` defaults to the embedding table (the reference defaults to the prompt's path), and
rows are not repeated when the population is large enough (the reference samples with replacement).
"""
from __future__ import annotations

import argparse
from typing import Sequence

import jax
import numpy as np

from prompt_tuning import errors, prompts
from prompt_tuning.runtime.checkpoints.restore import load_checkpoint_variable


def subsample_vocab(checkpoint_dir: str, output_path: str, prompt_length: int = 100, population_size: int = 5000,
                    seed: int = 42, embeddings_path: str = "target/token_embedder/embedding") -> np.ndarray:
  """Sample the `[prompt_length, d]` prompt and `np.save` it (float32) to `output_path`."""
  if prompt_length <= 0:
    raise ValueError(f"--prompt_length={prompt_length} must be positive.")
  table = np.asarray(load_checkpoint_variable(checkpoint_dir, embeddings_path), np.float32)
  if table.ndim != 2:
    raise ValueError(f"{embeddings_path!r} has shape {table.shape}; it should be an embedding table [vocab, d].")
  init = prompts.from_sampled_vocab(table, population_size if population_size > 0 else None)
  prompt = np.asarray(init(jax.random.PRNGKey(seed), (prompt_length, table.shape[1]), np.float32))
  prompts.np_save(output_path, prompt)
  return prompt


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint_dir", required=True)
  parser.add_argument("--embeddings_path", default="target/token_embedder/embedding")
  parser.add_argument("--prompt_length", type=int, default=100)
  parser.add_argument("--population_size", type=int, default=5000, help="first N rows; <= 0 means all")
  parser.add_argument("--seed", type=int, default=42)
  parser.add_argument("--output_path", required=True)
  args = parser.parse_args(argv)
  with errors.user_errors(KeyError, ValueError, FileNotFoundError):
    prompt = subsample_vocab(args.checkpoint_dir, args.output_path, args.prompt_length, args.population_size,
                             args.seed, args.embeddings_path)
  print(f"prompt {prompt.shape} -> {args.output_path}")


if __name__ == "__main__":
  main()
