"""A package's names imported on first use (PEP 562), so that importing one light module of a package does not
import torch with the rest.

Each package keeps its ``TYPE_CHECKING`` imports beside the table, for readers and type checkers.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, List, Tuple


def lazy_exports(
    namespace: Dict[str, Any], exports: Dict[str, str]
) -> Tuple[Callable[[str], Any], Callable[[], List[str]]]:
    """The ``__getattr__`` and ``__dir__`` of the package whose ``globals()`` is ``namespace``: ``exports`` maps each
    public name to the module, relative to the package (``".checkpoint"``), that defines it. A name is imported when
    first asked for, then kept in the package's namespace."""
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        namespace[name] = value
        return value

    def __dir__() -> List[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
