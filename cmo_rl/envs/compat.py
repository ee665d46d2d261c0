"""Python 3.11 import shim for safety-gymnasium 1.0.0.

safety-gymnasium 1.0.0 declares dataclasses whose field defaults are numpy arrays
(``color: np.ndarray = np.array([...])``). Python 3.11 made :mod:`dataclasses` reject every
unhashable default, so ``import safety_gymnasium`` raises
``ValueError: mutable default <class 'numpy.ndarray'> for field color is not allowed``.

This module installs an import hook (a :data:`sys.meta_path` finder) that wraps the execution of
``safety_gymnasium`` and every one of its submodules in :func:`ndarray_defaults_as_factories`.
Inside that context, a dataclass field whose default is an ``np.ndarray`` becomes
``field(default_factory=<copy of the array>)``: each instance gets its own copy (which is what the
authors meant), and the class attribute keeps the original array so class-level reads still work.
Nothing else is touched, and the hook is only installed on Python >= 3.11, where the package does
not import as shipped.

The hook is installed by ``import cmo_rl`` (and by ``import cmo_rl.envs``), so it is active before
anything, including TorchRL's lazy ``import safety_gymnasium``, imports the package.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Iterator

import numpy as np

__all__ = ["NEEDS_SHIM", "install", "ndarray_defaults_as_factories", "uninstall"]

#: True where ``dataclasses`` rejects unhashable defaults (Python >= 3.11).
NEEDS_SHIM: bool = sys.version_info >= (3, 11)

_PACKAGE = "safety_gymnasium"
_lock = threading.RLock()
_depth = 0


def _patched_process_class(original, cls, *args, **kwargs):
    annotations = cls.__dict__.get("__annotations__", {})
    arrays = {
        name: value
        for name, value in list(cls.__dict__.items())
        if name in annotations and isinstance(value, np.ndarray)
    }
    for name, value in arrays.items():
        setattr(cls, name, dataclasses.field(default_factory=functools.partial(np.copy, value)))
    result = original(cls, *args, **kwargs)
    for name, value in arrays.items():  # keep class-level reads (`Cls.color`) working
        setattr(result, name, value)
    return result


@contextlib.contextmanager
def ndarray_defaults_as_factories() -> Iterator[None]:
    """Within this context, dataclass fields with ``np.ndarray`` defaults get a copying factory.

    Re-entrant and thread-safe; restores :mod:`dataclasses` on exit.

    Examples:
        >>> import dataclasses, numpy as np
        >>> with ndarray_defaults_as_factories():
        ...     @dataclasses.dataclass
        ...     class Geom:
        ...         color: np.ndarray = np.array([1.0, 0.0, 0.0])
        >>> a, b = Geom(), Geom()
        >>> a.color[0] = 9.0
        >>> float(b.color[0]), float(Geom.color[0])
        (1.0, 1.0)
    """
    global _depth
    with _lock:
        if _depth == 0:
            original = dataclasses._process_class
            dataclasses._process_class = functools.partial(_patched_process_class, original)
            dataclasses._cmo_original_process_class = original
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                dataclasses._process_class = dataclasses._cmo_original_process_class
                del dataclasses._cmo_original_process_class


def _silence_adroit_notice() -> None:
    """Drop gymnasium-robotics' import-time stderr notice about its Adroit hand tasks.

    safety-gymnasium imports gymnasium-robotics, whose ``__init__`` prints a notice (from
    ``farama_notifications``) about reward changes of ``AdroitHand*`` tasks that cmo_rl never uses.
    It would otherwise precede every one-line error message of the recipes.
    """
    try:
        import farama_notifications
    except ImportError:  # pragma: no cover - an optional dependency of gymnasium-robotics
        return
    farama_notifications.notifications.pop("gymnasium_robotics", None)


class _ShimLoader(importlib.abc.Loader):
    """Delegates to the real loader, executing the module inside the shim context."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        if module.__name__ == _PACKAGE:
            _silence_adroit_notice()
        with ndarray_defaults_as_factories():
            self._loader.exec_module(module)

    def __getattr__(self, name):  # get_resource_reader, get_source, is_package, ...
        return getattr(self._loader, name)


class _SafetyGymnasiumFinder(importlib.abc.MetaPathFinder):
    """Finds ``safety_gymnasium[.*]`` with the other finders and wraps its loader."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _PACKAGE and not fullname.startswith(_PACKAGE + "."):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and not isinstance(spec.loader, _ShimLoader):
                    spec.loader = _ShimLoader(spec.loader)
                return spec
        return None


_finder = _SafetyGymnasiumFinder()


def install() -> bool:
    """Install the import hook (idempotent). Returns whether the hook is active.

    A no-op on Python < 3.11. If ``safety_gymnasium`` was already imported (which can only have
    succeeded where no shim is needed) nothing changes.

    Examples:
        >>> install() == NEEDS_SHIM  # already installed by ``import cmo_rl``; idempotent
        True
    """
    if not NEEDS_SHIM:
        return False
    with _lock:
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
    return True


def uninstall() -> None:
    """Remove the import hook (used by tests).

    Examples:
        >>> uninstall(); install() == NEEDS_SHIM  # put it back: later imports need it
        True
    """
    with _lock:
        if _finder in sys.meta_path:
            sys.meta_path.remove(_finder)


install()
