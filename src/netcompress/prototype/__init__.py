"""Data, reference models and the experiments behind the documentation's figures (docs/demos.md) (no API promise)."""
