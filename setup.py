"""exif-jax: EXIF as Language (Zheng, Owens, Shrivastava, CVPR 2023) in JAX/Flax NNX."""
from setuptools import find_namespace_packages, setup

# Exact pins: the set that resolved together on 2026-11-26 (Python 3.11), `pip check` clean.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "grain==0.2.18",
    "array-record==0.8.6",
    "tensorflow-datasets==4.9.10",
    "sentencepiece==0.2.3",
    "pillow==13.0.0",
    "numpy==2.4.6",
    "ml-collections==1.1.0",
    "msgpack==1.2.4",
    "tensorboardX==2.6.5",
    "matplotlib==3.11.2",
    "tqdm==4.70.1",
    "absl-py==2.5.1",
    "threadpoolctl==3.8.0",
    # build-data's lossless restart-marker rewrite (a Huffman re-encoder) is compiled by numba: a wheel, no
    # compiler or system libjpeg needed. The load path (crops) needs only Pillow.
    "numba==0.68.1",
    "llvmlite==0.50.0",
]

setup(
    name="exif-jax",
    version="0.1.0",
    description="EXIF as Language: camera-metadata contrastive pretraining and zero-shot splice localization in JAX",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # The asset folders (default model, tokenizer, photos) are data-only packages: listed as namespace packages,
    # each with all its files, so setuptools neither drops them nor warns that they would be ignored.
    packages=find_namespace_packages(include=["exif_jax", "exif_jax.*"], exclude=["*.__pycache__"]),
    package_dir={"": "."},  # flat layout said outright: `pip install -e .` is then a plain .pth, no notices
    package_data={f"exif_jax.assets.{d}": ["*"] for d in ("default_model", "photos", "tokenizer")},
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "torch": ["torch==2.13.0", "transformers==5.24.0", "safetensors==0.8.0"],
        # Object storage (gs://, s3://): fsspec's clients for file operations; tensorstore (already pulled in
        # by orbax) does the loader's range reads.
        "cloud": ["fsspec==2026.9.0", "gcsfs==2026.10.1", "s3fs==2026.9.0"],
        # Tests start real object-store emulators on 127.0.0.1.
        "dev": ["pytest==9.2.0", "scikit-learn==1.9.1", "ruff==0.17.6", "moto[server]==5.2.5",
                "gcp-storage-emulator==2026.7.19"],
        # build-data --engine ray (Ray tasks only, so core ray, not ray[data]), --parquet inputs (pyarrow);
        # psutil: tests/test_build_ray.py finds and kills a Ray worker, benchmarks/build_data.py reads RSS.
        "ray": ["ray==2.60.0", "pyarrow==26.0.1", "psutil==7.2.2"],
        # The TPU compiler (what jax[tpu]==0.10.2 pins): benchmarks/pod_compile.py --target tpu compiles for
        # abstract TPU slices on any machine, and a test does so for v5e:2x2. On a TPU VM it is the runtime too.
        "tpu": ["libtpu==0.0.42.1"],
    },
    entry_points={"console_scripts": ["exif-jax=exif_jax.cli:main"]},
)
