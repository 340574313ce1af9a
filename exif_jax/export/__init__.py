"""Exports to PyTorch libraries and import of the paper's weights."""


import os


class NotExportable(ValueError):
    """A config option with no equivalent in the target library; the message names the option."""


def write_safetensors(state: dict, path: str) -> None:
    """NumPy arrays -> a safetensors file torch loads (metadata format "pt"), readable like the rest of the export."""
    from safetensors.numpy import save_file

    save_file(state, path, metadata={"format": "pt"})
    os.chmod(path, 0o644)  # safetensors creates it owner-only
