"""Cloud TPU VMs and pod slices through `gcloud compute tpus tpu-vm` (`python -m launch.tpu`)."""
