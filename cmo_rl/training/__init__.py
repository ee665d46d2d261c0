"""Building blocks of the baseline recipes (``recipes/*.py``), one concept per module.

==========================  ========================================================================
module                      what
==========================  ========================================================================
``collection``              ``make_collector`` (one re-seeded batch per epoch), ``finished_episodes``
``onpolicy``                ``compute_advantages``, ``minibatch_epochs`` (KL early stop), learning rates
``parallel``                collection in worker processes or Ray actors
``rollout_eval``            ``evaluate_policy`` (deterministic episodes), ``sync_observation_norm``
``lagrangian_ppo``          ``train_lagrangian_ppo``: the loop of the PPO-Lag and PID-Lag recipes, their multipliers
``run_state``               what a recipe checkpoint holds and how it is restored; resumable keys
``run``                     ``TrainingRun``: epochs of a recipe on the shared run lifecycle
``schema``                  config schemas of the recipes and cross-key checks
``setup``                   seeds, threads, envs, networks, estimators, collector from a config
==========================  ========================================================================

Modules are imported explicitly (``from cmo_rl.training.run import TrainingRun``), so importing
this package stays light.
"""

import ast
import importlib
from functools import cache
from pathlib import Path
from typing import Any

_MODULES = (
    "collection",
    "lagrangian_ppo",
    "onpolicy",
    "parallel",
    "rollout_eval",
    "run",
    "run_state",
    "schema",
    "setup",
)


@cache
def _lazy() -> dict[str, str]:
    """Re-exported name -> its module: the union of the modules' ``__all__``, read from their
    source (so that ``import cmo_rl.training`` imports none of them)."""
    table: dict[str, str] = {}
    for module in _MODULES:
        tree = ast.parse((Path(__file__).parent / f"{module}.py").read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
            ):
                for name in ast.literal_eval(node.value):
                    table[name] = f"{__name__}.{module}"
    return table


def __getattr__(name: str) -> Any:
    if name == "__all__":
        value: Any = sorted(_lazy())
    elif name in _MODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    elif name in _lazy():
        value = getattr(importlib.import_module(_lazy()[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULES, *_lazy()})
