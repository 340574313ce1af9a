"""Exports to PyTorch libraries and import of the paper's weights (the shared tensor rules: layout.py)."""

from exif_jax.export.layout import NotExportable, write_safetensors

__all__ = ["NotExportable", "write_safetensors"]
