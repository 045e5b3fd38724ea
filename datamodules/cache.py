"""isoflop's on-disk cache and the one way every file or directory is written: atomically.

Everything isoflop builds once and reuses (the embedded corpus, trained tokenizers, the offline
downstream tasks) lives under one root, :func:`default_cache_dir`. Every such entry, and every result
file a run writes, goes to a temporary name in the same directory first and is renamed into place
(``os.replace`` is atomic on POSIX and Windows), so a crash, a kill or a full disk leaves either the
old content or the new one, never a truncated file that later runs would trust.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock


def default_cache_dir() -> Path:
    """``$ISOFLOP_CACHE`` if set (and not empty), else ``~/.cache/isoflop``."""
    env = os.environ.get("ISOFLOP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "isoflop"


def temporary_sibling(path: Path) -> Path:
    # Same directory (so the rename never crosses filesystems), unique per process and call; not
    # tempfile.mkdtemp, whose 0700 mode would make a shared cache unreadable to other users.
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write that appears at ``path`` only once the block ends without an error.

    It is written under a temporary name in the same directory, flushed to disk, and renamed over
    ``path``; an exception (a full disk, a kill) removes the temporary file and leaves ``path`` as it
    was. For writers that stream (``torch.save`` of a checkpoint) rather than hand over bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename (never a half-written file)."""
    with open_atomic(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return Path(path)


def replace_directory(build: Callable[[Path], None], final: str | os.PathLike) -> Path:
    """Run ``build(tmp)`` into a fresh temporary directory beside ``final``, then put it in ``final``'s
    place. A failed build leaves ``final`` as it was. (Replacing an existing directory takes two renames:
    the old one is moved aside first and deleted after, so ``final`` is never half-written.)"""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(final)
    tmp.mkdir()
    try:
        build(tmp)
        if final.exists():
            old = temporary_sibling(final)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def build_once(final: str | os.PathLike, build: Callable[[Path], None], done: str) -> Path:
    """A cache entry built at most once: ``final`` is complete when it holds the file ``done``.

    The first caller builds it (``build(tmp)`` writes into a temporary directory, which is then renamed
    to ``final``) under a file lock; concurrent callers (ranks, workers, other runs) wait and then find
    it built. Leftovers of a crashed build are removed under the lock. Returns ``final``.
    """
    final = Path(final)
    if (final / done).is_file():
        return final  # fast path: a finished entry is never modified, so no lock is needed to read it
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / done).is_file():
            return final
        for stale in final.parent.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # an incomplete entry written outside this function
            shutil.rmtree(final)
        replace_directory(build, final)
    return final
