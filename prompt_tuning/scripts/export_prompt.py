r"""Write a P-tuning run's prompt in its final form: the prompt encoder's output, a plain [P, d] `.npy`.

  python -m prompt_tuning.scripts.export_prompt --gin_file=models/t5_1_1_base_prompt.gin \
    --gin_file=families/ptuning.gin --gin_file=runs/export_prompt.gin --gin.PROMPT_LENGTH=100 \
    --gin.NUMPY_CHECKPOINT_DIR="'MODEL_DIR/numpy_checkpoints/checkpoint_1100000'" --gin.PROMPT_OUTPUT_PATH="'prompt.npy'"

Pass the model and family gin files (and macros) the run trained with. `NUMPY_CHECKPOINT_DIR` is one of the run's
numpy exports (they hold every trainable array: the embeddings and the encoder). The file needs no encoder: the
plain prompt model loads it (`prompts/from_file.gin`, or `runs/prompt_eval.gin` / `runs/prompt_infer.gin` with
`PROMPT_FILE`, same `PROMPT_LENGTH`) and gives the same predictions (docs/prompt_families.md, "P-tuning").
"""
from __future__ import annotations

from typing import Sequence

from prompt_tuning import cli, prompts
from prompt_tuning.families import ptuning
from prompt_tuning.gin_utils import ConfigError
from prompt_tuning.runtime.models import EncoderDecoderModel
from prompt_tuning.scripts.export_prefixes import load_numpy_export


def export_prompt(*, model: EncoderDecoderModel, numpy_checkpoint_dir: str, output_path: str) -> str:
  """Compute the final [P, d] prompt of the model's `PTuningPrompt` from a numpy export; returns the path."""
  params = load_numpy_export(numpy_checkpoint_dir)
  prompt = params.get("encoder", {}).get("prompt", {}).get("prompt", {})
  if "embedding" not in prompt:
    raise ConfigError(f"{numpy_checkpoint_dir!r} holds no P-tuning prompt (encoder.prompt.prompt.embedding): was "
                      "the run trained with families/ptuning.gin?")
  try:
    value = ptuning.final_prompt(model.module, {"encoder": {"prompt": {"prompt": prompt}}})
  except Exception as e:  # a shape / name mismatch between the gin model and the export
    if "ScopeParam" in type(e).__name__:
      raise ConfigError(f"The prompt encoder in {numpy_checkpoint_dir!r} does not match the gin-configured one "
                        f"({e}); pass the gin files and PROMPT_LENGTH / PTUNING_* macros the run used.") from e
    raise
  prompts.np_save(output_path, value)
  return output_path


def main(argv: Sequence[str]) -> None:
  path = cli.run_gin_main(argv, export_prompt)
  print(f"prompt: {path}")


if __name__ == "__main__":
  cli.start(main)
