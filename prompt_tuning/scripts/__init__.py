"""Command-line tools (`python -m prompt_tuning.scripts.<name>`)."""
