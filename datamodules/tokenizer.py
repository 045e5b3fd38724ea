"""WordPiece tokenizers: trained on the training split (cached on disk) or loaded by name/path.

A trained tokenizer is an uncased (by default) BERT-style WordPiece vocabulary, the ELECTRA
paper's choice, saved as a Hugging Face ``ElectraTokenizerFast`` so exports load it with
``AutoTokenizer.from_pretrained``. Its vocabulary size is exactly the one asked for: when the corpus
supports fewer pieces, the rest is filled with ``[unusedN]`` tokens, as in BERT's own vocabulary,
so the encoder's embedding matrix and the tokenizer always agree.

Reproducibility: the vocabulary is a function of the corpus alone. The `tokenizers` library's own
WordPiece trainer breaks ties between equally frequent merges in hash-map order, which changes from
process to process (two trainings on one corpus differed in 6 of 8,192 pieces, and since pieces are
numbered in sorted order, most ids shifted); so the merges are learned here, with ties broken by the
pieces themselves, on the library's normalisation and pre-tokenisation. A cache still saves the
training: every run on one cache shares the trained tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from transformers import AutoTokenizer, ElectraTokenizerFast, PreTrainedTokenizerBase

from datamodules.cache import build_once

# Fixed ids 0..4 for the special tokens of trained tokenizers.
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TOKENIZER_VERSION = "wordpiece-3"  # 3: merges learned deterministically (learn_merges)


def train_wordpiece(texts: Iterable[str], vocab_size: int, lowercase: bool = True) -> ElectraTokenizerFast:
    """Train a BERT-style WordPiece tokenizer with exactly ``vocab_size`` tokens: BERT's normalisation
    and pre-tokenisation (the ``tokenizers`` library's), word counts, then :func:`learn_merges`."""
    from tokenizers import normalizers, pre_tokenizers

    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    pieces = sorted(learn_merges(counts, vocab_size - len(SPECIAL_TOKENS)))
    # Canonical numbering: specials, then the pieces sorted; padded to the exact size asked for.
    vocab = {piece: i for i, piece in enumerate(SPECIAL_TOKENS + pieces)}
    for i in range(vocab_size - len(vocab)):
        vocab[f"[unused{i}]"] = len(vocab)
    return ElectraTokenizerFast(vocab=vocab, do_lower_case=lowercase, strip_accents=lowercase)


def learn_merges(counts: dict[str, int], size: int, min_frequency: int = 2, prefix: str = "##") -> set[str]:
    """WordPiece's vocabulary as BERT's and the ``tokenizers`` library's trainers learn it (byte-pair
    merges over words, non-initial pieces marked with ``prefix``), deterministically: every character
    of the corpus (``c`` word-initially, ``##c`` inside a word) is a piece, then the most frequent
    adjacent pair of pieces is merged, over and over, until there are ``size`` pieces or no pair occurs
    ``min_frequency`` times. Ties go to the pair that sorts first, so the result depends on the word
    counts only, never on hash or thread order."""
    import heapq

    words = [[w[0]] + [prefix + c for c in w[1:]] for w in counts]
    freq = list(counts.values())
    vocab = {piece for word in words for piece in word}
    pairs: dict[tuple[str, str], int] = {}
    where: dict[tuple[str, str], set[int]] = {}
    for i, word in enumerate(words):
        for pair in zip(word, word[1:]):
            pairs[pair] = pairs.get(pair, 0) + freq[i]
            where.setdefault(pair, set()).add(i)
    heap = [(-n, a, b) for (a, b), n in pairs.items()]
    heapq.heapify(heap)
    while len(vocab) < size and heap:
        n, a, b = heapq.heappop(heap)
        if pairs.get((a, b), 0) != -n:
            continue  # a stale entry: the pair's count changed since (its current entry is in the heap)
        if -n < min_frequency:
            break
        merged = a + b[len(prefix):]
        vocab.add(merged)
        changed = set()
        for i in where.pop((a, b)):  # the order of words and of pushes changes nothing: counts add up
            old = words[i]
            new, j = [], 0
            while j < len(old):
                if j + 1 < len(old) and old[j] == a and old[j + 1] == b:
                    new.append(merged)
                    j += 2
                else:
                    new.append(old[j])
                    j += 1
            if len(new) == len(old):
                continue
            for pair in zip(old, old[1:]):
                pairs[pair] -= freq[i]
                changed.add(pair)
            for pair in zip(new, new[1:]):
                pairs[pair] = pairs.get(pair, 0) + freq[i]
                where.setdefault(pair, set()).add(i)
                changed.add(pair)
            words[i] = new
        pairs.pop((a, b), None)
        for pair in changed:
            if pairs.get(pair, 0) > 0:
                heapq.heappush(heap, (-pairs[pair], *pair))
    return vocab


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
) -> PreTrainedTokenizerBase:
    """Train once per (corpus, settings) and reuse: the tokenizer lives in ``cache_dir/tokenizers/<hash>``.

    ``texts`` is called only on a cache miss; concurrent ranks wait for the first (``build_once``).
    """
    blob = json.dumps({**key, "vocab_size": vocab_size, "lowercase": lowercase, "v": TOKENIZER_VERSION}, sort_keys=True)
    path = Path(cache_dir) / "tokenizers" / hashlib.sha256(blob.encode()).hexdigest()[:16]

    def build(tmp: Path) -> None:
        train_wordpiece(texts(), vocab_size, lowercase).save_pretrained(tmp)
        (tmp / "isoflop_tokenizer.json").write_text(blob)

    build_once(path, build, done="isoflop_tokenizer.json")
    return AutoTokenizer.from_pretrained(path)
