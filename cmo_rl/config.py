"""Config validation before any work, with one clear message listing every problem.

A schema maps each config key to a :class:`Field` (or to a nested schema for a sub-config)::

    SCHEMA = {
        "env_id": Field(str, check=env_id_check()),
        "seed": Field(int, ge=0),
        "device": Field(str, check=device_check),
        "cost_limit": Field(float, ge=0),
        "meta_optimizer_type": Field(str, choices=("lstm", "pid")),
        "meta_batch_size": Field(int, ge=1),
        "optim": {"lr": Field(float, gt=0), "betas": Field(list, items=float, required=False)},
    }

:func:`validate_config` checks a Hydra/OmegaConf config (or a plain dict) against it and raises one
:class:`ConfigError` naming, for every problem, the dotted key, the bad value and what is allowed:
unknown keys (with close-match hints), missing keys, wrong types (``bool`` is not an ``int``; an
``int`` is a ``float``), out-of-range numbers, values outside ``choices``, bad list items, and
failed per-key ``check`` callables.

Recipes (Hydra) use :func:`run_cli` *inside* ``hydra.main`` so that the message is printed to
stderr without a traceback and the process exits with code 2::

    @hydra.main(config_path="config", config_name="ppo_lag", version_base=None)
    @run_cli(schema=SCHEMA)
    def main(cfg: DictConfig) -> None:
        ...

Hydra composes the config in *struct mode*: an override of a key that is not in the yaml
(``python recipes/ppo_lag.py optim.lrr=1e-3``) fails before ``main`` runs with Hydra's own
one-line message (``Could not override 'optim.lrr'. ... Key 'lrr' is not in struct``), exit code
1. Recipes must keep struct mode (never ``OmegaConf.set_struct(cfg, False)``); new keys belong in
the yaml and the schema, not in ``+key=`` overrides.
"""

from __future__ import annotations

import difflib
import functools
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cmo_rl.signals import exit_code_for

__all__ = [
    "ConfigError",
    "Field",
    "device_check",
    "env_id_check",
    "run_cli",
    "validate_config",
]

Schema = Mapping[str, "Field | Schema"]
_TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict"}


class ConfigError(ValueError):
    """Invalid configuration; ``problems`` lists each one, the message joins them all.

    >>> print(ConfigError(["seed: got -1, out of range; allowed: int >= 0"]))
    invalid config (1 problem):
      - seed: got -1, out of range; allowed: int >= 0
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        n = len(self.problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid config ({n} problem{'s' if n != 1 else ''}):\n{lines}")


@dataclass(frozen=True)
class Field:
    """Declarative rule for one config value.

    Args:
        type: ``int``, ``float``, ``str``, ``bool``, ``list`` or ``dict`` (or a tuple of them).
            ``float`` accepts ints; ``int`` rejects bools and floats; ``dict`` accepts any sub-config
            without checking its keys.
        ge, gt, le, lt: inclusive / exclusive bounds for numbers.
        choices: the allowed values.
        items: element type for ``list`` values (same int/float rules).
        check: a callable run on the value; it raises ``ValueError(reason)`` or returns ``False``
            when the value is bad.
        required: a missing key is an error (else it may be absent).
        nullable: ``None`` (yaml ``null``) is allowed.

    >>> Field(float, gt=0).describe(), Field(str, choices=("lstm", "pid")).describe()
    ('float > 0', "one of ['lstm', 'pid']")
    """

    type: type | tuple[type, ...]
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: Sequence[Any] | None = None
    items: type | None = None
    check: Callable[[Any], Any] | None = None
    required: bool = True
    nullable: bool = False

    def describe(self) -> str:
        """Human-readable allowed values, e.g. ``int >= 1`` or ``list of float``."""
        if self.choices is not None:
            text = f"one of {list(self.choices)}"
        else:
            types = self.type if isinstance(self.type, tuple) else (self.type,)
            text = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
            if self.items is not None:
                text += f" of {_TYPE_NAMES.get(self.items, self.items.__name__)}"
            bounds = [
                f"{op} {v:g}"
                for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                if v is not None
            ]
            if bounds:
                text += " " + " and ".join(bounds)
        if self.check is not None and self.choices is None:
            text += f", passing {getattr(self.check, '__name__', 'check')}"
        return text + (" or null" if self.nullable else "")


def _type_ok(value: Any, expected: type) -> bool:
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _value_problems(key: str, value: Any, field: Field) -> list[str]:
    allowed = field.describe()
    if value is None:
        return [] if field.nullable else [f"{key}: got null, allowed: {allowed}"]
    types = field.type if isinstance(field.type, tuple) else (field.type,)
    if not any(_type_ok(value, t) for t in types):
        return [f"{key}: got {value!r} ({type(value).__name__}), allowed: {allowed}"]
    if field.choices is not None and value not in field.choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in field.choices], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return [f"{key}: got {value!r}, allowed: {allowed}{hint}"]
    if _type_ok(value, float):
        bad = (
            (field.ge is not None and not value >= field.ge)
            or (field.gt is not None and not value > field.gt)
            or (field.le is not None and not value <= field.le)
            or (field.lt is not None and not value < field.lt)
            or (isinstance(value, float) and math.isnan(value))
        )
        if bad:
            return [f"{key}: got {value!r}, out of range; allowed: {allowed}"]
    if field.items is not None and isinstance(value, list):
        wrong = [i for i, v in enumerate(value) if not _type_ok(v, field.items)]
        if wrong:
            i = wrong[0]
            return [
                f"{key}: item {i} is {value[i]!r} ({type(value[i]).__name__}), allowed: {allowed}"
            ]
    if field.check is not None:
        try:
            ok = field.check(value)
        except (ValueError, TypeError, KeyError) as err:
            reason = err.args[0] if err.args else type(err).__name__
            return [f"{key}: got {value!r}: {reason}"]
        if ok is False:
            return [f"{key}: got {value!r}, allowed: {allowed}"]
    return []


_MISSING = object()


def _entries(cfg: Any, prefix: str) -> tuple[dict[str, Any], list[str]]:
    """Key -> plain value (resolved) of one config level, and the problems met while reading."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    out: dict[str, Any] = {}
    problems: list[str] = []
    if isinstance(cfg, DictConfig):
        for key in cfg.keys():
            if OmegaConf.is_missing(cfg, key):
                out[key] = _MISSING
                continue
            try:
                value = cfg[key]
                if isinstance(value, ListConfig):
                    value = OmegaConf.to_container(value, resolve=True)
            except Exception as err:  # interpolation errors and the like
                problems.append(f"{prefix}{key}: cannot be resolved ({err})".replace("\n", " "))
                continue
            out[key] = value
    elif isinstance(cfg, Mapping):
        out = dict(cfg)
    else:
        problems.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {cfg!r}")
    return out, problems


def _validate(cfg: Any, schema: Schema, prefix: str) -> list[str]:
    from omegaconf import DictConfig, OmegaConf

    values, problems = _entries(cfg, prefix)
    for key in values:
        if key not in schema:
            close = difflib.get_close_matches(str(key), list(schema), n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            problems.append(f"{prefix}{key}: unknown key{hint}; known keys: {sorted(schema)}")
    for key, rule in schema.items():
        name = f"{prefix}{key}"
        value = values.get(key, _MISSING)
        if isinstance(rule, Mapping):
            if value is _MISSING:
                problems.append(f"{name}: missing sub-config (keys {sorted(rule)})")
            elif not isinstance(value, (Mapping, DictConfig)):
                problems.append(
                    f"{name}: got {value!r} ({type(value).__name__}), allowed: a sub-config "
                    f"with keys {sorted(rule)}"
                )
            else:
                problems.extend(_validate(value, rule, f"{name}."))
            continue
        if not isinstance(rule, Field):
            raise TypeError(f"schema entry {name!r} must be a Field or a dict, got {rule!r}")
        if value is _MISSING:
            if rule.required:
                problems.append(f"{name}: missing (or ???), allowed: {rule.describe()}")
            continue
        if isinstance(value, DictConfig):  # a sub-config checked as one value (type dict)
            try:
                value = OmegaConf.to_container(value, resolve=True)
            except Exception as err:
                problems.append(f"{name}: cannot be resolved ({err})".replace("\n", " "))
                continue
        problems.extend(_value_problems(name, value, rule))
    return problems


def validate_config(cfg: Any, schema: Schema) -> None:
    """Check ``cfg`` (an OmegaConf ``DictConfig`` or a dict) against ``schema``.

    Raises:
        ConfigError: every problem at once, each naming the dotted key, the bad value and the
            allowed values.

    >>> schema = {"lr": Field(float, gt=0), "meta_batch_size": Field(int, ge=1),
    ...           "meta_optimizer_type": Field(str, choices=("lstm", "pid"))}
    >>> validate_config({"lr": 3e-4, "meta_batch_size": 4, "meta_optimizer_type": "pid"}, schema)
    >>> try:
    ...     validate_config({"lr": -1e-3, "meta_batch_size": 0, "meta_optimizer_type": "lsmt"},
    ...                     schema)
    ... except ConfigError as err:
    ...     print(err)
    invalid config (3 problems):
      - lr: got -0.001, out of range; allowed: float > 0
      - meta_batch_size: got 0, out of range; allowed: int >= 1
      - meta_optimizer_type: got 'lsmt', allowed: one of ['lstm', 'pid'] (did you mean 'lstm'?)
    """
    problems = _validate(cfg, schema, "")
    if problems:
        raise ConfigError(problems)


def device_check(value: str) -> bool:
    """A torch device string that exists here (``cpu``, ``cuda``, ``cuda:1``, ``mps``).

    >>> device_check("cpu")
    True
    >>> device_check("gpu")
    Traceback (most recent call last):
    ...
    ValueError: not a torch device string (use 'cpu', 'cuda' or 'cuda:<index>')
    """
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(
            "not a torch device string (use 'cpu', 'cuda' or 'cuda:<index>')"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("CUDA is not available on this machine (use device=cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("MPS is not available on this machine")
    return True


def env_id_check(*extra_ids: str, state_vector: bool = False) -> Callable[[str], bool]:
    """A ``check`` for task ids: :func:`cmo_rl.envs.registry.validate_env_id`, plus ``extra_ids``.

    ``extra_ids`` are accepted as-is (e.g. a mock env's id used in smoke tests). The returned
    callable raises ``ValueError`` with close-match suggestions for an unknown id. With
    ``state_vector=True`` (the recipes and ``cmo``, whose MLP policies read one flat
    ``observation``) pixel-observation ids are refused too, naming their state-based twin.

    >>> check = env_id_check("MockCMDP-v0", state_vector=True)
    >>> check("MockCMDP-v0"), check("SafetyPointGoal1-v0")
    (True, True)
    >>> try:
    ...     check("SafetyPointGoal1Vision-v0")
    ... except ValueError as err:
    ...     print(str(err)[:72])
    'SafetyPointGoal1Vision-v0' observes pixels (a dict of sensors and a 'vi
    """
    extra = frozenset(extra_ids)

    def env_id(value: str) -> bool:
        if value in extra:
            return True
        from cmo_rl.envs.registry import has_pixel_observations, validate_env_id

        validate_env_id(value)
        if state_vector and has_pixel_observations(value):
            twin = value.replace("Vision-v", "-v")
            raise ValueError(
                f"{value!r} observes pixels (a dict of sensors and a 'vision' image), but the "
                f"MLP policies here take the flat state vector 'observation': use {twin!r} "
                "(make_safety_env builds pixel tasks for your own pipelines)"
            )
        return True

    return env_id


def run_cli(
    main_fn: Callable[..., Any] | None = None, *, schema: Schema | None = None
) -> Callable[..., Any]:
    """Wrap a recipe's ``main(cfg)``: validate, run, and turn failures into clean exits.

    * ``ConfigError`` (from ``schema`` validation before ``main`` starts, or raised later):
      the message alone goes to stderr (no traceback), exit code 2.
    * ``KeyboardInterrupt`` (Ctrl-C, or SIGTERM under :func:`cmo_rl.signals.graceful_shutdown`),
      after the recipe's own ``finally`` blocks ran: one line to stderr, exit code 130 / 143.

    Use as ``@run_cli`` or ``@run_cli(schema=SCHEMA)``, placed *below* ``@hydra.main`` (Hydra
    would otherwise print its own traceback). ``functools.wraps`` keeps Hydra's lookup of the
    recipe file working.

    >>> @run_cli(schema={"lr": Field(float, gt=0)})
    ... def main(cfg):
    ...     return cfg["lr"] * 2
    >>> main({"lr": 0.5})
    1.0
    """
    if main_fn is None:
        return functools.partial(run_cli, schema=schema)

    @functools.wraps(main_fn)
    def wrapper(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            if schema is not None:
                validate_config(cfg, schema)
            return main_fn(cfg, *args, **kwargs)
        except ConfigError as err:
            sys.stderr.write(f"{err}\n")
            sys.stderr.flush()
            raise SystemExit(2) from None
        except KeyboardInterrupt as err:
            sys.stderr.write(f"interrupted ({err or 'KeyboardInterrupt'}); exiting\n")
            sys.stderr.flush()
            raise SystemExit(exit_code_for(err)) from None

    return wrapper
