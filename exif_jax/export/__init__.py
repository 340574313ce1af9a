"""Exports to PyTorch libraries and import of the paper's weights."""


class NotExportable(ValueError):
    """A config option with no equivalent in the target library; the message names the option."""
