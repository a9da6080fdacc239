"""Export trained prompts to other ecosystems (Hugging Face PEFT)."""

from prompt_tuning.export.peft import export_peft_prompt

__all__ = ["export_peft_prompt"]
