"""Sweeps for the paper's scaling curves: a JSON spec of sizes x methods x tasks x seeds x prompt lengths /
initialisers, run locally or on Cloud TPU, collected into a CSV and plotted (`python -m prompt_tuning.sweeps`).
See docs/scaling.md."""
