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

Programs (Hydra) use :func:`cmo_rl.lifecycle.run_cli` *inside* ``hydra.main`` so that the message is printed to
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
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ConfigError",
    "Field",
    "RENAMED_KEYS",
    "Rule",
    "TrackedConfig",
    "check_override_keys",
    "device_check",
    "env_id_check",
    "layer_widths",
    "not_blank",
    "rename_overrides",
    "rename_stored_keys",
    "validate_config",
]

Schema = Mapping[str, "Field | Schema"]
_TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict"}


class ConfigError(ValueError):
    """Invalid configuration; ``problems`` lists each one, the message joins them all.

    Examples:
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
        ge: inclusive lower bound for numbers (``value >= ge``).
        gt: exclusive lower bound for numbers (``value > gt``).
        le: inclusive upper bound for numbers (``value <= le``).
        lt: exclusive upper bound for numbers (``value < lt``).
        choices: the allowed values.
        items: element type for ``list`` values (same int/float rules).
        check: a callable run on the value; it raises ``ValueError(reason)`` or returns ``False``
            when the value is bad.
        required: a missing key is an error (else it may be absent).
        nullable: ``None`` (yaml ``null``) is allowed.

    Examples:
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


@dataclass(frozen=True)
class Rule:
    """A check that involves several keys (``steps_per_epoch`` a multiple of ``num_envs``).

    Args:
        keys: the dotted keys it reads; it runs only when each of them passed its own
            :class:`Field` (a bad value is reported once, by its field).
        check: ``check(cfg) -> list of problems`` (``"key: what is wrong"``), ``cfg`` a plain
            dict of the resolved config.

    Examples:
        >>> def even(cfg):
        ...     return [] if cfg["batch"] % cfg["envs"] == 0 else ["batch: not a multiple of envs"]
        >>> schema = {"batch": Field(int, ge=1), "envs": Field(int, ge=1)}
        >>> try:
        ...     validate_config({"batch": 10, "envs": 3}, schema, [Rule(("batch", "envs"), even)])
        ... except ConfigError as err:
        ...     print(err.problems)
        ['batch: not a multiple of envs']
    """

    keys: tuple[str, ...]
    check: Callable[[Mapping[str, Any]], Sequence[str]]


def _plain(cfg: Any) -> Any:
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def validate_config(cfg: Any, schema: Schema, rules: Sequence[Rule] = ()) -> None:
    """Check ``cfg`` (an OmegaConf ``DictConfig`` or a dict) against ``schema`` and the
    cross-key ``rules``.

    Raises:
        ConfigError: every problem at once — single-key and cross-key — each naming the dotted
            key, the bad value and the allowed values.

    Examples:
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
    if rules:
        bad = {p.split(":", 1)[0] for p in problems}
        plain = None
        for rule in rules:
            if bad.intersection(rule.keys):
                continue
            if plain is None:
                plain = _plain(cfg)
            problems.extend(rule.check(plain))
    if problems:
        raise ConfigError(problems)


def layer_widths(values: list) -> bool:
    """``check`` for MLP layer widths: a non-empty list, each width ``>= 1``.

    Examples:
        >>> layer_widths([64, 64])
        True
        >>> layer_widths([])
        Traceback (most recent call last):
        ...
        ValueError: needs at least one layer width, each >= 1
    """
    if not values or any(v < 1 for v in values):
        raise ValueError("needs at least one layer width, each >= 1")
    return True


def not_blank(value: str) -> bool:
    """``check`` for a string that must not be empty or blank (a path, a name).

    Examples:
        >>> not_blank("runs")
        True
    """
    if not value.strip():
        raise ValueError("must not be empty")
    return True


def device_check(value: str) -> bool:
    """A torch device string that exists here (``cpu``, ``cuda``, ``cuda:1``, ``mps``).

    Examples:
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

    Examples:
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


class TrackedConfig(Mapping[str, Any]):
    """Read-only view of a nested plain-dict config that records which keys are read.

    Attribute or item access (``cfg.meta_lr``, ``cfg["meta_test"]["rounds"]``) of a leaf
    records its dotted name; ``key in cfg`` does not. :meth:`unread` lists the leaves never
    read: the test that every key of ``default.yaml`` is used runs the program on this view.
    ``read`` names keys that are read elsewhere (e.g. the lifecycle's,
    :data:`cmo_rl.lifecycle.Run.KEYS`).

    Examples:
        >>> cfg = TrackedConfig({"lr": 0.1, "sub": {"a": 1, "b": 2}})
        >>> cfg.lr, cfg.sub.a, sorted(cfg.unread())
        (0.1, 1, ['sub.b'])
    """

    def __init__(
        self,
        data: Mapping[str, Any],
        _prefix: str = "",
        _reads: set | None = None,
        *,
        read: Iterable[str] = (),
    ):
        self._data = data
        self._prefix = _prefix
        self._reads: set[str] = set(read) if _reads is None else _reads

    def __getitem__(self, key: str) -> Any:
        value = self._data[key]
        name = f"{self._prefix}{key}"
        if isinstance(value, Mapping):
            return TrackedConfig(value, f"{name}.", self._reads)
        self._reads.add(name)
        return value

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"config has no key {self._prefix}{key!r}") from None

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def unread(self) -> set[str]:
        """Dotted names of the leaves that were never read."""

        def leaves(data: Mapping[str, Any], prefix: str) -> Iterator[str]:
            for key, value in data.items():
                if isinstance(value, Mapping):
                    yield from leaves(value, f"{prefix}{key}.")
                else:
                    yield f"{prefix}{key}"

        return set(leaves(self._data, self._prefix)) - self._reads


def check_override_keys(args: Sequence[str], schema: Schema) -> None:
    """Reject command-line overrides of keys that are not in ``schema`` (``meta_lrr=1``,
    ``+foo=1``) with the same one-message :class:`ConfigError` as other config problems, before
    Hydra (whose struct-mode error would exit with code 1) sees them. Hydra's own settings
    (``hydra.*``, ``-m``), config-group choices (``preset=quick``, ``hydra/launcher=...``) pass.

    Examples:
        >>> schema = {"meta_lr": Field(float), "meta_test": {"rounds": Field(int)},
        ...           "inner": Field(dict)}
        >>> check_override_keys(["meta_lr=1e-3", "meta_test.rounds=2", "preset=quick", "-m",
        ...                      "inner.lr=1e-3"], schema)
        >>> try:
        ...     check_override_keys(["meta_lrr=1e-3"], schema)
        ... except ConfigError as err:
        ...     print(err)
        invalid config (1 problem):
          - meta_lrr: unknown key (did you mean meta_lr?)
    """
    problems = []
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key = arg.split("=", 1)[0].lstrip("+~")
        if "/" in key or key.split(".", 1)[0] in ("hydra", "preset"):
            continue  # Hydra's own settings and config-group choices
        node: Any = schema
        for depth, part in enumerate(key.split(".")):
            if isinstance(node, Field) and node.type is dict:
                break  # a free-form sub-config (its program checks the keys below it)
            if not isinstance(node, Mapping) or part not in node:
                known = list(node) if isinstance(node, Mapping) else []
                close = difflib.get_close_matches(part, known, n=1)
                prefix = ".".join(key.split(".")[:depth])
                hint = (
                    f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
                )
                problems.append(f"{key}: unknown key{hint}")
                break
            node = node[part]
    if problems:
        raise ConfigError(problems)


#: Config keys renamed so that one concept has one name in every program (old name -> name).
#: The old names keep working: on the command line (:func:`rename_overrides`, with a note) and
#: in the stored config of a run written before the rename (:func:`rename_stored_keys`).
RENAMED_KEYS: Mapping[str, str] = {
    "lambda_init": "init_lambda",  # the recipes' name; cmo (the seed) says init_lambda
    "max_episode_steps": "episode_length",  # the recipes' and compare's name; cmo's is episode_length
}


def rename_overrides(
    args: Sequence[str], renamed: Mapping[str, str] = RENAMED_KEYS
) -> tuple[list[str], list[str]]:
    """Command-line overrides with renamed top-level keys spelled the new way, and one note per
    rewritten key (for stderr). Run before Hydra parses the arguments.

    Examples:
        >>> rename_overrides(["lambda_init=0.5", "seed=1", "-m", "max_episode_steps=10,20"])
        (['init_lambda=0.5', 'seed=1', '-m', 'episode_length=10,20'], ['lambda_init is now called init_lambda (the old name still works)', 'max_episode_steps is now called episode_length (the old name still works)'])
    """
    out, notes = [], []
    for arg in args:
        if not arg.startswith("-") and "=" in arg:
            key, value = arg.split("=", 1)
            bare = key.lstrip("+~")
            if bare in renamed:
                arg = f"{key[: len(key) - len(bare)]}{renamed[bare]}={value}"
                notes.append(f"{bare} is now called {renamed[bare]} (the old name still works)")
        out.append(arg)
    return out, notes


def rename_stored_keys(
    cfg: Mapping[str, Any], renamed: Mapping[str, str] = RENAMED_KEYS
) -> dict[str, Any]:
    """A stored config (a run's ``config.yaml`` or checkpoint) with renamed top-level keys
    spelled the new way; a config that already has the new key keeps it.

    Examples:
        >>> rename_stored_keys({"lambda_init": 0.1, "seed": 0})
        {'init_lambda': 0.1, 'seed': 0}
    """
    return {
        (renamed[key] if key in renamed and renamed[key] not in cfg else key): value
        for key, value in cfg.items()
    }
