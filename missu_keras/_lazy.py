"""Module attributes loaded on first use (PEP 562), for the package ``__init__`` files
that must stay light: ``missu-keras --help`` reads the package without loading
TensorFlow, and a name is imported from its defining module only when it is asked for.
"""

from __future__ import annotations

import importlib
from typing import Callable, Dict, Tuple


def lazy_exports(package: str, exports: Dict[str, str],
                 namespace: dict) -> Tuple[Callable[[str], object], Callable[[], list]]:
    """``(__getattr__, __dir__)`` for the module ``package`` whose globals are
    ``namespace``: ``exports`` maps each public name to the module that defines it; a
    name is imported on first access and then kept in ``namespace``.

    >>> ns = {}
    >>> getattr_, dir_ = lazy_exports("pkg", {"sqrt": "math"}, ns)
    >>> getattr_("sqrt")(9.0), "sqrt" in ns, dir_()
    (3.0, True, ['sqrt'])
    >>> getattr_("nope")
    Traceback (most recent call last):
    ...
    AttributeError: module 'pkg' has no attribute 'nope'
    """

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
