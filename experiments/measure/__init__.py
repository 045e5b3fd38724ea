"""The measuring tools: ``isoflop bench`` (a training step against the plain loop) and the studies
behind the documentation's tables (``python -m experiments.measure.<name>``)."""
