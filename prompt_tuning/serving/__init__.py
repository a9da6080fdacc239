"""Using trained prompts: banks of per-task prompts, ensembles and transfer (SPoT, ATTEMPT)."""
