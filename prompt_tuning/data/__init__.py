"""SeqIO tasks for prompt tuning: T5 text formats, metrics and vocabularies.

`import prompt_tuning.data.tasks` registers all tasks; see `docs/data.md`.
"""
