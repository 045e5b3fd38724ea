"""WordPiece tokenizers: trained on the training split (cached on disk) or loaded by name/path.

A trained tokenizer is an uncased (by default) BERT-style WordPiece vocabulary, the ELECTRA
paper's choice, saved as a Hugging Face ``ElectraTokenizerFast`` so exports load it with
``AutoTokenizer.from_pretrained``. Its vocabulary size is exactly the one asked for: when the corpus
supports fewer pieces, the rest is filled with ``[unusedN]`` tokens, as in BERT's own vocabulary,
so the encoder's embedding matrix and the tokenizer always agree.

Reproducibility: the corpus is byte-identical for a Python version, but the `tokenizers` trainer
breaks ties between equally frequent merges in an order that varies between processes, so two
trainings can differ in a few pieces. Every run that uses one cache shares the one trained
tokenizer (all objectives of a comparison do); to pin it across machines, pass its directory
(``<cache>/tokenizers/<hash>``) as ``tokenizer``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from transformers import AutoTokenizer, ElectraTokenizerFast, PreTrainedTokenizerBase

from datamodules.cache import build_once

# Fixed ids 0..4 for the special tokens of trained tokenizers.
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TOKENIZER_VERSION = "wordpiece-2"


def train_wordpiece(
    texts: Iterable[str], vocab_size: int, lowercase: bool = True, length: int | None = None
) -> ElectraTokenizerFast:
    """Train a BERT-style WordPiece tokenizer with exactly ``vocab_size`` tokens."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=True, min_frequency=2
    )
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    # The trainer numbers pieces in hash-map order, which changes from process to process: number
    # them canonically (specials, then sorted). Its merges can also break count ties differently
    # from one process to the next (a handful of pieces out of thousands), so a trained tokenizer is
    # reproducible through its cache, not through retraining: every run on one cache shares it.
    pieces = sorted(set(tok.get_vocab()) - set(SPECIAL_TOKENS))
    vocab = {piece: i for i, piece in enumerate(SPECIAL_TOKENS + pieces)}
    for i in range(vocab_size - len(vocab)):  # pad to the exact size asked for
        vocab[f"[unused{i}]"] = len(vocab)
    return ElectraTokenizerFast(vocab=vocab, do_lower_case=lowercase, strip_accents=lowercase)


def tokenizer_hash(tokenizer: PreTrainedTokenizerBase) -> str:
    """A stable hash of a tokenizer's full definition (for cache keys)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """Any Hugging Face tokenizer by hub name or local path, with a clear error if it cannot be found."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"could not load tokenizer {name_or_path!r} (looked for a local directory and a Hugging Face hub "
            f"name): {str(err).splitlines()[0]}"
        ) from None
    if tokenizer.mask_token is None or tokenizer.pad_token is None:
        raise ValueError(f"tokenizer {name_or_path!r} has no [MASK] or no [PAD] token: masked-input objectives need both")
    return tokenizer


def cached_wordpiece(
    texts: "callable[[], Iterator[str]]",
    key: dict,
    cache_dir: str | os.PathLike,
    vocab_size: int,
    lowercase: bool = True,
    length: int | None = None,
) -> PreTrainedTokenizerBase:
    """Train once per (corpus, settings) and reuse: the tokenizer lives in ``cache_dir/tokenizers/<hash>``.

    ``texts`` is called only on a cache miss; concurrent ranks wait for the first (``build_once``).
    """
    blob = json.dumps({**key, "vocab_size": vocab_size, "lowercase": lowercase, "v": TOKENIZER_VERSION}, sort_keys=True)
    path = Path(cache_dir) / "tokenizers" / hashlib.sha256(blob.encode()).hexdigest()[:16]

    def build(tmp: Path) -> None:
        train_wordpiece(texts(), vocab_size, lowercase, length).save_pretrained(tmp)
        (tmp / "isoflop_tokenizer.json").write_text(blob)

    build_once(path, build, done="isoflop_tokenizer.json")
    return AutoTokenizer.from_pretrained(path)
