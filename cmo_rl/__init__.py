"""cmo_rl: constraint-aware meta-optimization of policy gradient, as TorchRL/TensorDict components.

``import cmo_rl`` is light: it installs the Python 3.11 import shim for safety-gymnasium
(:mod:`cmo_rl.envs.compat`) and nothing else. The public names of the component packages
(:mod:`cmo_rl.envs`, :mod:`cmo_rl.modules`, :mod:`cmo_rl.objectives`, :mod:`cmo_rl.meta`,
:mod:`cmo_rl.testing`: every name of their ``__all__``, so a new public name needs no edit here)
are re-exported, and the utility modules (``config``, ``evaluation``, ``lifecycle``,
``plotting``, ``training``) are attributes. All of them load on first
access: ``import cmo_rl`` imports neither torch, TorchRL nor safety-gymnasium; the first
re-exported name (or ``cmo_rl.__all__``, ``dir(cmo_rl)``) imports the component packages. Map of
the package and its keys: ``docs/index.md``, ``docs/design.md``.

>>> import cmo_rl
>>> from cmo_rl import LagrangianPPOLoss, MockCMDPEnv, PIDLagrangian, actor_critic_from_env
>>> env = MockCMDPEnv(num_envs=2, episode_length=3, seed=0)
>>> actor, critic, cost_critic = actor_critic_from_env(env, hidden_layers=(8,))
>>> loss = LagrangianPPOLoss(actor, critic, cost_critic, multiplier=PIDLagrangian(cost_limit=1.0))
>>> cmo_rl.evaluation.constraint_satisfaction_rate([0.5, 2.0], limit=1.0)
0.5
"""

from cmo_rl.envs import compat as _compat  # noqa: F401  (Python 3.11 shim, before anything else)

# isort: split
import importlib
import pkgutil
from functools import cache
from typing import Any

__version__ = "0.1.0"

#: Submodules reachable as attributes (``cmo_rl.plotting``) without an explicit import.
_SUBMODULES = (
    "config",
    "envs",
    "evaluation",
    "lifecycle",
    "meta",
    "modules",
    "objectives",
    "plotting",
    "testing",
    "training",
)

#: The component packages whose ``__all__`` is re-exported (``from cmo_rl import make_env``).
_REEXPORTED = ("envs", "modules", "objectives", "meta", "testing")


@cache
def _exports() -> dict[str, str]:
    """Re-exported name -> the package that exports it: the union of the ``__all__`` of
    :data:`_REEXPORTED`. The first call imports those packages (torch, TorchRL)."""
    table: dict[str, str] = {}
    for package in _REEXPORTED:
        module = importlib.import_module(f"{__name__}.{package}")
        for name in module.__all__:
            if name in table:
                raise ImportError(
                    f"{name!r} is exported by both {table[name]} and {module.__name__}"
                )
            table[name] = module.__name__
    return table


@cache
def _module_names() -> frozenset[str]:
    """The modules and packages directly under ``cmo_rl`` (found on disk, none imported)."""
    return frozenset(info.name for info in pkgutil.iter_modules(__path__))


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    elif name == "__all__":
        value = [*_SUBMODULES, *_exports()]
    elif name.startswith("__") or name in _module_names() or name not in _exports():
        # dunder probes (inspect, pickle) and other submodules (``from cmo_rl import compare``,
        # which the import system then loads) are answered without importing torch
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    else:
        value = getattr(importlib.import_module(_exports()[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBMODULES, *_exports()})
