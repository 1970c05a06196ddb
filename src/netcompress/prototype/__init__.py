"""Data, reference models and the experiments behind the README's figures (no API promise)."""
