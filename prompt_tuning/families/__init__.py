"""Prompt families beyond a single soft prompt, each a `prompt_tuning.family.PromptFamily` configured by a gin file
under `gin_configs/families/`.

* `instance`: instance-wise prompts (IDPG, IPT): a small generator makes each example's prompt.
* `multitask`: a shared prompt plus task-specific parts (the reference's modes, MPT, factorised multilingual).
* `distillation`: MPT's source training, a loss term distilling single-task teacher prompts.
* `deep`: per-layer prompts (replace / add at every encoder layer) and prefix tuning (key/value prefixes).
* `ia3`: IA³ scaling vectors, as site hooks inside every layer.
* `wayward`: prompt tuning pulled towards an embedded task description (Khashabi et al. 2022), a loss term.
* `count`: trainable parameters and extra forward FLOPs of a configured model.

See docs/prompt_families.md.
"""
