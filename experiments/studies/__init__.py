"""Studies: scripts that run a grid of configurations through the library and write the table the
documentation shows (``python -m experiments.studies.<name>``)."""
