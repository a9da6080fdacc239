"""Prompt families beyond a single soft prompt, each selected by a gin file under `gin_configs/families/`.

* `instance`: instance-wise prompts (IDPG, IPT): a small generator makes each example's prompt.
* `multitask`: a shared prompt plus task-specific parts (the reference's modes and MPT, with distillation).
* `deep`: per-layer prompts (replace / add at every encoder layer) and prefix tuning (key/value prefixes).
* IA³ lives in the model (`T5Config.ia3`, `families/ia3.gin`).
* `wayward`: prompt tuning pulled towards an embedded task description (Khashabi et al. 2022).
* `count`: trainable parameters and extra forward FLOPs of a configured model.

See docs/prompt_families.md.
"""
