"""Launchers: `launch.local` (several jax.distributed processes on this machine), `launch.tpu` (Cloud TPU VMs and
pod slices through gcloud) and `launch.gpu` (multi-node GPU through jax.distributed and SLURM).

Entry points for a checkout: each calls its module in `prompt_tuning.launch`, which an installed package runs as
`python -m prompt_tuning.launch.<name>`."""
