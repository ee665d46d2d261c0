"""``torch.compile`` where it helps, eager where it fails: one wrapper for the population's
hot functions (the minibatch step, the vmapped policy forward).

Compiling a vmapped function over ``P`` learners removes most of its per-call dispatch (the
policy forward of 8 learners: ~210 us eager, ~55 us compiled on this project's CPU); a
compile that fails (no C compiler, an unsupported op, a recompile limit) must not stop a
training run, so the first failure warns once and the function runs eagerly from then on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["CompiledOrEager"]


class CompiledOrEager:
    """``fn`` compiled (``torch.compile(fn, dynamic=False)``) when ``compile``, else ``fn``;
    if a compiled call raises, warn once (naming ``what``) and call ``fn`` eagerly from then on.

    Examples:
        >>> double = CompiledOrEager(lambda x: 2 * x, what="doubling", compile=False)
        >>> double(torch.ones(2)), double.compiled
        (tensor([2., 2.]), False)
    """

    def __init__(self, fn: Callable[..., Any], *, what: str, compile: bool) -> None:
        self.eager = fn
        self.what = what
        self.fn = torch.compile(fn, dynamic=False) if compile else fn

    @property
    def compiled(self) -> bool:
        """Whether calls still go through the compiled function."""
        return self.fn is not self.eager

    def __call__(self, *args: Any) -> Any:
        try:
            return self.fn(*args)
        except Exception as error:
            if not self.compiled:
                raise
            message = str(error).splitlines()[0] if str(error) else ""
            warnings.warn(
                f"torch.compile of {self.what} failed ({type(error).__name__}: {message}); "
                "running eagerly",
                stacklevel=2,
            )
            self.fn = self.eager
            return self.fn(*args)
