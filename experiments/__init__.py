"""The ``isoflop`` command and the library calls behind it, in rooms:

- the command surface, here: ``cli`` (the subcommands), ``config`` (a pre-training configuration and
  how each of its options is classified), ``presets`` (the shipped YAML files) and ``errors`` (one-line
  errors and exit codes);
- ``experiments.run``: one pre-training run (preparing it, its directory, budget, callbacks,
  checkpoints, resume, throughput, loggers, ranks, export);
- ``experiments.comparison``: many runs into one table (``compare``, ``sweep``, results, ladders);
- ``experiments.finetuning``: judging an encoder on downstream tasks over seeds;
- ``experiments.measure``: the measuring tools (``bench``, and the studies behind the documentation's
  tables).
"""
