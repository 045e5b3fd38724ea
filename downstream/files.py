"""Reading one local data file (tsv, csv, jsonl, json, parquet) as a table: GLUE's local copies
(:mod:`downstream.glue`) and a user's own task (:mod:`downstream.own`) alike."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

EXTENSIONS = (".tsv", ".csv", ".jsonl", ".json", ".parquet")


def read_table(path: Path) -> pd.DataFrame:
    """Read one local file. Text columns stay text: "NA" or "null" in a sentence is a word, not missing."""
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".csv"):
        # QUOTE_NONE for TSV: GLUE sentences contain unbalanced quotes that must stay as they are.
        sep, quoting = ("\t", 3) if suffix == ".tsv" else (",", 0)
        return pd.read_csv(path, sep=sep, quoting=quoting, dtype=str, keep_default_na=False)
    if suffix == ".jsonl":
        return pd.read_json(path, lines=True, dtype=False)
    if suffix == ".json":
        with open(path) as f:
            is_array = f.read(4096).lstrip().startswith("[")  # records array, else JSON lines
        return pd.read_json(path, lines=not is_array, dtype=False)
    if suffix == ".parquet":
        return pd.read_parquet(path)
    raise ValueError(f"{path}: unsupported file type {suffix!r} (use one of {', '.join(EXTENSIONS)})")
