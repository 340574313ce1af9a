"""Exports to PyTorch libraries and import of the paper's weights."""
