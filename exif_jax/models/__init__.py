"""Image and text towers (Flax NNX)."""
