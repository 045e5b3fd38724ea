"""Objective-agnostic data: pre-training text, tokenizers, and downstream tasks."""

from datamodules.glue import GlueDataModule
from datamodules.pretraining import PretrainingDataModule

__all__ = ["PretrainingDataModule", "GlueDataModule"]
