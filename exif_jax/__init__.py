"""exif-jax: EXIF as Language in JAX. Modules follow the data flow:
exif -> tokenizer -> data -> models -> losses -> train -> eval -> export."""

__version__ = "0.1.0"
