"""Baselines that prompt tuning is compared against (prompt design; model tuning is `runs/finetune.gin`)."""
