"""Several `jax.distributed` processes on this machine, a multi-host rehearsal on CPU (`python -m launch.local`):
runs `prompt_tuning.launch.local`."""
