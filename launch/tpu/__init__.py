"""Cloud TPU VMs and pod slices through `gcloud compute tpus tpu-vm` (`python -m launch.tpu`): runs
`prompt_tuning.launch.tpu`."""
