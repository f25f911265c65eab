"""User code named in recipes as `module:function` or `path/to/file.py:function` (gold functions, rewards)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from align.errors import AlignError


def is_callable_spec(spec: str) -> bool:
    """`module:function` or `file.py:function` (and not an existing path such as a model folder)."""
    if ":" not in spec or Path(spec).exists():
        return False
    target, _, name = spec.rpartition(":")
    return bool(target) and name.isidentifier()


def load_callable(spec: str, what: str = "function") -> Callable[..., Any]:
    """Import the named function; every failure is one AlignError naming `spec` and what went wrong."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr.isidentifier():
        raise AlignError(f"{what} {spec!r}: expected 'module:function' or 'path/to/file.py:function'")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser()
            if not path.is_file():
                raise AlignError(f"{what} {spec!r}: file {path} not found")
            name = f"_align_user_{path.stem}_{abs(hash(str(path.resolve())))}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except AlignError:
        raise
    except Exception as exc:  # ImportError, or any error raised while the module runs
        raise AlignError(f"{what} {spec!r}: cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise AlignError(f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise AlignError(f"{what} {spec!r}: {attr!r} is a {type(fn).__name__}, not callable")
    return fn
