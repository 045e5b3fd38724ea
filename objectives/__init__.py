"""Pre-training objectives, one LightningModule per file, chosen on the command line by class path
(``--model objectives.ReplacedTokenDetection``).

There is no registry to edit: every concrete subclass of
:class:`objectives.base.PretrainingObjective` defined in a module of this package is an objective.
:func:`discover` lists them (``isoflop compare``, ``bench``, ``sweep`` and the tests use it), and
``objectives.<ClassName>`` resolves to any of them, so a new objective is one new file.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil


def discover() -> dict[str, type]:
    """Every objective class in this package, by class name, in module order (modules sorted by name)."""
    from objectives.base import PretrainingObjective

    found: dict[str, type] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and obj.__module__ == module.__name__ and issubclass(obj, PretrainingObjective)
                    and not inspect.isabstract(obj)):
                found[name] = obj
    return found


def class_path(cls: type) -> str:
    """The short class path of an objective (``objectives.MaskedLM``), as presets and the CLI write it."""
    return f"{__name__}.{cls.__name__}"


def resolve(path: str) -> type:
    """An objective class from ``objectives.X``, ``X`` or a full import path (``my_pkg.mod.MyObjective``);
    a one-line ValueError lists the available objectives."""
    from objectives.base import PretrainingObjective

    known = discover()
    name = path.removeprefix(f"{__name__}.")
    if name in known:
        return known[name]
    if "." in name:
        module, _, attr = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, ValueError):
            cls = None
        if inspect.isclass(cls) and issubclass(cls, PretrainingObjective) and not inspect.isabstract(cls):
            return cls
    raise ValueError(f"unknown objective {path!r}; available: {', '.join(class_path(c) for c in known.values())}")


def __getattr__(name: str):
    # ``objectives.MaskedLM`` (presets, class paths, ``from objectives import MaskedLM``) for every
    # objective of the package, without importing them all when ``objectives`` alone is imported.
    if name[:1].isupper():
        known = discover()
        if name in known:
            return known[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
