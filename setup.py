"""diffjax: DDPM, score-SDE and flow matching as one recipe, in JAX."""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "ml-collections>=1.1.0",
    "tensorflow-datasets>=4.9.10",
    "grain>=0.2.18",
    "array-record>=0.8.6",
    "absl-py>=2.1",
    "numpy>=1.26",
    "scikit-learn>=1.5",
    "matplotlib>=3.8",
    # ADM's resize and centre crop (config.data.image_size).
    "pillow>=10",
    "tqdm>=4.66",
    "tensorboardX>=2.6",
    # Adaptive probability-flow and likelihood ODEs (Dopri5 + PID controller).
    "diffrax>=0.7",
    # Text encoders: safetensors weights and Hugging Face tokenizers (neither needs torch).
    "safetensors>=0.4",
    "tokenizers>=0.19",
]

setup(
    name="diffjax",
    version="0.1.0",
    description="Diffusion models as one recipe: Gaussian path, target, weighting.",
    packages=find_packages(include=["diffjax", "diffjax.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # The suite also runs the cluster launcher (on submitit's local executor).
        "test": ["pytest>=8", "pytest-xdist>=3.5", "submitit>=1.5"],
        # GPU users: `pip install -e ".[cuda12]"` (Linux x86_64, NVIDIA driver >= 525).
        "cuda12": ["jax[cuda12]>=0.10.2"],
        # TPU users: `pip install -e ".[tpu]"` on a Cloud TPU VM.
        "tpu": ["jax[tpu]>=0.10.2"],
        # Cross-checks against reference implementations (experiments/benchmarks/*_vs_*.py);
        # torch pinned to the version the checks were run with (it takes the CPU wheel).
        "compare": ["torch==2.13.0", "pytorch-fid", "diffusers", "sentence-transformers"],
        # Sweeps on a SLURM cluster: `python -m diffjax.sweep --launcher=slurm` (README).
        "slurm": ["submitit>=1.5"],
    },
)
