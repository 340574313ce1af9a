"""Zero-shot localization, detection, probes and retrieval."""
