"""Launchers: `launch.local` (several jax.distributed processes on this machine), `launch.tpu` (Cloud TPU VMs and
pod slices through gcloud) and `launch.gpu` (multi-node GPU through jax.distributed and SLURM)."""
