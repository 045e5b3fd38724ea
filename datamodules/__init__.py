"""Objective-agnostic pre-training data: the embedded corpus, tokenizers, packed examples, and the
on-disk cache they share. (Downstream tasks live in the :mod:`downstream` package.)

``from datamodules import PretrainingDataModule`` works; it is imported on first use, so that the light
modules here (``datamodules.cache``, ``datamodules.corpus``) do not pull in Lightning."""

__all__ = ["PretrainingDataModule"]


def __getattr__(name: str):
    if name == "PretrainingDataModule":
        from datamodules.pretraining import PretrainingDataModule

        return PretrainingDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
