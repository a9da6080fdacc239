"""Multi-node GPU training through `jax.distributed` and SLURM (`python -m launch.gpu`): runs
`prompt_tuning.launch.gpu`."""
