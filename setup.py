"""Packaging for prompt_tuning: soft prompts on frozen T5-family models in JAX/Flax."""
import pathlib

import setuptools

HERE = pathlib.Path(__file__).parent

INSTALL_REQUIRES = [
    "absl-py>=1.4",
    "numpy>=1.26",
    "jax>=0.4.35",
    "flax>=0.10.0",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.10.0",
    "chex>=0.1.87",
    "gin-config>=0.5.0",
    "seqio>=0.0.19",
    "tensorflow>=2.16",
    "tensorflow-datasets>=4.9.4",
    "sentencepiece>=0.2.0",
    "clu>=0.0.12",
    "tensorboard>=2.16",
    "msgpack>=1.0.7",
    "zstandard>=0.22",
    "ml_dtypes>=0.4",
    "etils[epath]>=1.7",
    # Orbax lists and deletes checkpoint steps under a gs:// MODEL_DIR through it (it asks whether the bucket
    # has a hierarchical namespace); without it every gs:// run stops with an ImportError.
    "google-cloud-storage>=2.14",
    "matplotlib>=3.8",
    "scipy>=1.11",
    "rouge-score>=0.1.2",  # T5's ROUGE for the summarization tasks
]

EXTRAS = {
    # gcp-storage-emulator: the local GCS that tests/test_gcs_end_to_end.py runs every CLI against.
    "test": ["pytest>=8.0", "pytest-xdist>=3.5", "gcp-storage-emulator>=2026.7.19"],
    # PyTorch only for parity with Hugging Face T5 and the PEFT baseline; the CPU build is pinned on purpose.
    "hf": ["torch==2.13.0", "transformers>=4.44", "safetensors>=0.4.3", "peft>=0.12"],
    "tpu": ["jax[tpu]>=0.4.35", "tensorstore>=0.1.65"],
    "gpu": ["jax[cuda12]>=0.4.35", "tensorstore>=0.1.65"],
}

# The gin files live in gin_configs/ at the top of the repository and ship as prompt_tuning/gin_configs/: each of
# its folders is a data-only package there.
GIN_PACKAGES = {"prompt_tuning." + ".".join(d.relative_to(HERE).parts): d.relative_to(HERE).as_posix()
                for d in [HERE / "gin_configs", *sorted(p for p in (HERE / "gin_configs").rglob("*") if p.is_dir())]}

setuptools.setup(
    name="prompt_tuning",
    version="0.1.0",
    description="Prompt tuning (Lester et al. 2021) on frozen T5 1.1 / LM-adapted T5 / mT5 in JAX, T5X-compatible.",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["prompt_tuning", "prompt_tuning.*"]) + list(GIN_PACKAGES),
    package_dir=GIN_PACKAGES,
    package_data={**{package: ["*.gin"] for package in GIN_PACKAGES}, "prompt_tuning.sweeps": ["specs/*.json"],
                  "prompt_tuning.launch": ["sbatch.template"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
