r"""Recycle a prompt from the model it was trained on to another model (the reference's `recycling/run_recycle`).

  python -m prompt_tuning.scripts.recycle_prompt --source_model=gs://.../source/checkpoint_1100000 \
    --target_model=gs://.../target/checkpoint_1100000 --prompt_path=sst2.npy --output_path=recycled.npy \
    [--recycler=v2v-nn|v2v-lin|lin-comb] [--filtered_word=words.json] [--num_words=4000] [--word_offset=1000]

Models are checkpoints (T5X native, our Orbax runs, Hugging Face folders) or `.npy` embedding tables; the
embedding table is read from `--embeddings_path`. The output feeds `prompts/from_file.gin` on the target model.
See `prompt_tuning.serving.recycling` for the recyclers.
"""
from __future__ import annotations

import argparse
from typing import Sequence

import numpy as np

from prompt_tuning import errors, prompts
from prompt_tuning.runtime.checkpoints.restore import load_checkpoint_variable
from prompt_tuning.serving import recycling

EMBEDDINGS_PATH = "target/token_embedder/embedding"


def load_table(model: str, embeddings_path: str = EMBEDDINGS_PATH) -> np.ndarray:
  """A model's [vocab, d] embedding table: a `.npy` file, or the variable of a checkpoint."""
  table = prompts.np_load(model)() if model.endswith(".npy") else load_checkpoint_variable(model, embeddings_path)
  table = np.asarray(table, np.float32)
  if table.ndim != 2:
    raise ValueError(f"The embeddings of {model} have shape {table.shape}; expected a table [vocab, d].")
  return table


def main(argv: Sequence[str] | None = None) -> np.ndarray:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--source_model", required=True, help="the model the prompt was trained with")
  parser.add_argument("--target_model", required=True, help="the model to recycle the prompt to")
  parser.add_argument("--prompt_path", required=True, help="the [P, d_source] prompt (.npy or the reference's export)")
  parser.add_argument("--output_path", required=True)
  parser.add_argument("--embeddings_path", default=EMBEDDINGS_PATH)
  parser.add_argument("--filtered_word", default=None,
                      help="JSON word list (id -> word, or a list of ids); default: the vocabulary's order")
  parser.add_argument("--num_words", type=int, default=4000)
  parser.add_argument("--word_offset", type=int, default=1000)
  parser.add_argument("--recycler", default="v2v-nn", choices=recycling.RECYCLERS)
  parser.add_argument("--hidden_scale", type=int, default=4, help="v2v-nn: hidden width = scale × target width")
  parser.add_argument("--batch_size", type=int, default=50, help="v2v-nn")
  parser.add_argument("--learning_rate", type=float, default=3e-4, help="v2v-nn (Adam)")
  parser.add_argument("--epochs", type=int, default=25, help="v2v-nn")
  args = parser.parse_args(argv)
  with errors.user_errors(KeyError, ValueError, FileNotFoundError):
    source, target = load_table(args.source_model, args.embeddings_path), load_table(args.target_model,
                                                                                     args.embeddings_path)
    ids = recycling.support_ids(min(len(source), len(target)), args.num_words, args.word_offset, args.filtered_word)
    prompt = np.asarray(prompts.np_load(args.prompt_path)(), np.float32)
    recycled = recycling.recycle_prompt(prompt, source, target, ids, args.recycler, args.hidden_scale,
                                        batch_size=args.batch_size, epochs=args.epochs,
                                        learning_rate=args.learning_rate)
  prompts.np_save(args.output_path, recycled)
  print(f"{args.recycler}: prompt {prompt.shape} from {args.source_model} -> {recycled.shape} for "
        f"{args.target_model}, fitted on {len(ids)} words -> {args.output_path}")
  return recycled


if __name__ == "__main__":
  main()
