r"""Writes a trained prompt (a `.npy` array [length, width]) as a Hugging Face PEFT prompt-tuning adapter.

  python -m prompt_tuning.scripts.export_peft --prompt_file prompt.npy --output_dir adapter/ \
      --base_model google/t5-base-lm-adapt [--task_type SEQ_2_SEQ_LM] [--num_transformer_submodules 1]

Then `PeftModel.from_pretrained(T5ForConditionalGeneration.from_pretrained(base), "adapter/")` prepends the
prompt to the encoder input, as prompt tuning trained it. The prompt file may also be one of the reference's
numpy exports (`numpy_checkpoints/checkpoint_<step>/encoder.prompt.prompt.prompt`, a .npy without suffix).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from prompt_tuning import errors, prompts
from prompt_tuning.export import peft


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m prompt_tuning.scripts.export_peft", description=__doc__.split("\n")[0])
  parser.add_argument("--prompt_file", required=True, help="the prompt as a .npy array [length, width]")
  parser.add_argument("--output_dir", required=True, help="where to write the adapter files")
  parser.add_argument("--base_model", required=True,
                      help="Hugging Face name or local dir of the frozen model (recorded in adapter_config.json; "
                           "a local dir's d_model is checked against the prompt width)")
  parser.add_argument("--task_type", default="SEQ_2_SEQ_LM", choices=peft.TASK_TYPES)
  parser.add_argument("--num_transformer_submodules", type=int, default=1, choices=(1, 2),
                      help="1: one [length, width] table for the encoder (default); 2: PEFT's seq2seq layout")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = _parse(argv)
  with errors.user_errors(FileNotFoundError, ValueError):
    prompt = prompts.np_load(args.prompt_file)()
    out = peft.export_peft_prompt(prompt, args.output_dir, args.base_model, task_type=args.task_type,
                                  num_transformer_submodules=args.num_transformer_submodules)
  print(f"Wrote a PEFT prompt-tuning adapter ({prompt.shape[0]} tokens x {prompt.shape[1]}) to {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
