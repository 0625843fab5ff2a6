"""Package attributes imported when first used (PEP 562), so importing a package is cheap.

``dmt_privacy.dp`` and ``dmt_privacy.anonymity`` export scikit-learn
transformers; importing scikit-learn (and scipy) takes seconds. A module that
needs only a receipt or a plan imports its submodule, and that runs the
package's ``__init__`` first: with :func:`lazy_exports` that costs nothing,
and ``from dmt_privacy.dp import LocalDPPerturber`` still works.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str], namespace: dict[str, Any]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps each public name to the
    submodule defining it; a name is imported on first access and kept in ``namespace``."""

    def __getattr__(name: str) -> Any:
        submodule = exports.get(name)
        if submodule is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{submodule}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
