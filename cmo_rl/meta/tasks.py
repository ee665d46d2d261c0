"""What a meta-training task is: its settings, its env, and the sampler that builds it.

A task is a :class:`~cmo_rl.meta.problems.RolloutCMDP`: one env (a task id, reseeded per task),
a fresh policy and fresh critics. :class:`TaskSettings` holds what every task of a run shares
(episode length, envs per task, network widths, GAE and critic settings, device),
:class:`EnvFactory` turns a task id into an env (``MockCMDP-v0`` included), and
:class:`RolloutTaskSampler` builds the task of a seed. A sampler for other task ids with the same settings:
``RolloutTaskSampler(ids, sampler.settings)``; with one setting changed:
``RolloutTaskSampler(ids, sampler.settings, vector_envs_per_task=8)``.

Task choice: ``sampler(seed)`` draws the env id from ``seed``; ``sampler(seed, env_index=i)``
fixes it, e.g. to :func:`balanced_env_index` (stratified sampling, see
:class:`~cmo_rl.meta.trainer.MetaTrainer`'s ``balanced_tasks``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cmo_rl.envs.factory import MOCK_ENV_ID
from cmo_rl.meta.problems import RolloutCMDP
from cmo_rl.modules.actor_critic import make_actor, make_cost_critic, make_value_critic

__all__ = ["EnvFactory", "RolloutTaskSampler", "TaskSettings", "balanced_env_index"]

#: A task id (``"SafetyPointGoal1-v0"``, ``"MockCMDP-v0"``) or ``factory(num_envs=, seed=,
#: device=) -> EnvBase``.
EnvSpec = str | Callable[..., Any]
#: The :class:`TaskSettings` fields that are :class:`~cmo_rl.meta.problems.RolloutCMDP` options.
_PROBLEM_OPTIONS = ("episode_length", "gamma", "gae_lambda", "critic_lr", "critic_steps")
_PROBLEM_DEFAULTS = {k: p.default for k, p in inspect.signature(RolloutCMDP).parameters.items()}
_NETWORK_DEFAULTS = {k: p.default for k, p in inspect.signature(make_actor).parameters.items()}


@dataclass(frozen=True)
class TaskSettings:
    """What every task of a sampler shares.

    Attributes:
        episode_length: ``T``, steps per env per inner round (and the envs' episode length).
        vector_envs_per_task: ``B``, the ``num_envs`` of each task's env.
        hidden_layers: MLP widths of the fresh policy and critics.
        gamma: GAE discount of reward and cost.
        gae_lambda: GAE lambda of reward and cost.
        critic_lr: learning rate of the critics' Adam, fitted beside each inner run.
        critic_steps: full-batch critic steps per inner round.
        device: device of env outputs, policy and critics.

    The defaults of the networks and of the inner problem are those of
    :func:`~cmo_rl.modules.make_actor` and :class:`~cmo_rl.meta.problems.RolloutCMDP`.

    Examples:
        >>> settings = TaskSettings(episode_length=10, hidden_layers=[8])
        >>> settings.hidden_layers, settings.device, settings.steps_per_round
        ((8,), device(type='cpu'), 10)
        >>> dataclasses.replace(settings, vector_envs_per_task=4).steps_per_round
        40
    """

    episode_length: int
    vector_envs_per_task: int = 1
    hidden_layers: tuple[int, ...] = _NETWORK_DEFAULTS["hidden_layers"]
    gamma: float = _PROBLEM_DEFAULTS["gamma"]
    gae_lambda: float = _PROBLEM_DEFAULTS["gae_lambda"]
    critic_lr: float = _PROBLEM_DEFAULTS["critic_lr"]
    critic_steps: int = _PROBLEM_DEFAULTS["critic_steps"]
    device: torch.device = torch.device("cpu")

    def __post_init__(self) -> None:
        if self.vector_envs_per_task < 1:
            raise ValueError(f"vector_envs_per_task must be >= 1, got {self.vector_envs_per_task}")
        normal = {
            "episode_length": int(self.episode_length),
            "vector_envs_per_task": int(self.vector_envs_per_task),
            "hidden_layers": tuple(int(h) for h in self.hidden_layers),
            "gamma": float(self.gamma),
            "gae_lambda": float(self.gae_lambda),
            "critic_lr": float(self.critic_lr),
            "critic_steps": int(self.critic_steps),
            "device": torch.device(self.device),
        }
        for name, value in normal.items():
            object.__setattr__(self, name, value)

    @property
    def steps_per_round(self) -> int:
        """Env steps of one inner round: ``episode_length * vector_envs_per_task``."""
        return self.episode_length * self.vector_envs_per_task

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], **overrides: Any) -> TaskSettings:
        """The settings named in ``cfg`` (other keys ignored; absent ones take the defaults
        above), then ``overrides``.

        Examples:
            >>> TaskSettings.from_config({"episode_length": 5, "gamma": 0.9, "lr": 1.0},
            ...                          vector_envs_per_task=2).gamma
            0.9
        """
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{**{k: cfg[k] for k in names if k in cfg}, **overrides})


class EnvFactory:
    """``factory(num_envs=, seed=, device=)`` of one task id; its ``__name__`` is the id (the
    per-task metric names use it). ``MockCMDP-v0`` is :class:`cmo_rl.testing.MockCMDPEnv`; other
    ids go to :func:`cmo_rl.envs.make_safety_env` with ``max_episode_steps=episode_length``.

    Examples:
        >>> env = EnvFactory("MockCMDP-v0", episode_length=4)(num_envs=2, seed=0, device="cpu")
        >>> EnvFactory("MockCMDP-v0", 4).__name__, tuple(env.batch_size), env.episode_length
        ('MockCMDP-v0', (2,), 4)
    """

    def __init__(self, env_id: str, episode_length: int) -> None:
        self.__name__ = self.env_id = str(env_id)
        self.episode_length = int(episode_length)

    def __call__(self, *, num_envs: int, seed: int, device: torch.device | str) -> Any:
        if self.env_id == MOCK_ENV_ID:
            from cmo_rl.testing import MockCMDPEnv

            return MockCMDPEnv(
                num_envs=num_envs, episode_length=self.episode_length, seed=seed, device=device
            )
        from cmo_rl.envs import make_safety_env

        return make_safety_env(
            self.env_id, num_envs, seed=seed, device=device, max_episode_steps=self.episode_length
        )

    def __repr__(self) -> str:
        return f"EnvFactory({self.env_id!r}, episode_length={self.episode_length})"


def balanced_env_index(task_number: int, num_env_ids: int) -> int:
    """The env of the ``task_number``-th task under stratified sampling: the ids in turn, so a
    meta-batch whose size is a multiple of ``num_env_ids`` holds every id equally often (the
    same expected meta-gradient as uniform draws, without the variance of the task mix).

    Examples:
        >>> [balanced_env_index(n, 2) for n in range(5)]
        [0, 1, 0, 1, 0]
    """
    return int(task_number) % int(num_env_ids)


def _env_name(env: EnvSpec) -> str:
    if isinstance(env, str):
        return env
    if isinstance(env, functools.partial):
        return getattr(env.func, "__name__", repr(env.func))
    return getattr(env, "__name__", repr(env))


class RolloutTaskSampler:
    """Builds :class:`~cmo_rl.meta.problems.RolloutCMDP` tasks from task ids or env factories.

    Args:
        env_ids: task ids (built by :class:`EnvFactory`) or callables ``factory(num_envs=...,
            seed=..., device=...) -> EnvBase`` (e.g. ``functools.partial(MockCMDPEnv,
            episode_length=20)``).
        settings: the :class:`TaskSettings` of every task.
        **changes: :class:`TaskSettings` fields set on top of ``settings`` (or, without
            ``settings``, the fields of new settings: ``episode_length=`` at least).

    One env per id is built on first use and reseeded for every task (building MuJoCo scenes
    is slow). ``sampler(seed)`` draws the env id from ``seed``; ``sampler(seed, env_index=i)``
    fixes it. The fresh networks' initialisation depends only on ``seed``.

    Examples:
        >>> import functools
        >>> from cmo_rl.testing import MockCMDPEnv
        >>> sampler = RolloutTaskSampler([functools.partial(MockCMDPEnv, episode_length=5)],
        ...                              episode_length=5, vector_envs_per_task=2,
        ...                              hidden_layers=(8,))
        >>> task = sampler(seed=3)  # a RolloutCMDP with a fresh policy and critics
        >>> task.name, task.env.batch_size
        ('MockCMDPEnv', torch.Size([2]))
        >>> RolloutTaskSampler(["MockCMDP-v0"], sampler.settings).settings == sampler.settings
        True
    """

    def __init__(
        self, env_ids: Sequence[EnvSpec], settings: TaskSettings | None = None, **changes: Any
    ) -> None:
        if isinstance(env_ids, str) or len(env_ids) == 0:
            raise ValueError(
                f"env_ids must be a non-empty list of ids or factories, got {env_ids!r}"
            )
        self.env_ids = list(env_ids)
        self.settings = (
            TaskSettings(**changes)
            if settings is None
            else dataclasses.replace(settings, **changes)
        )
        self._envs: dict[int, Any] = {}

    def env_name(self, index: int) -> str:
        """The name of ``env_ids[index]`` (the id, or the factory's ``__name__``)."""
        return _env_name(self.env_ids[index])

    def _factory(self, index: int) -> Callable[..., Any]:
        env = self.env_ids[index]
        if isinstance(env, str):
            return EnvFactory(env, self.settings.episode_length)
        if not callable(env):
            raise ValueError(f"env_ids[{index}] must be an env id or a factory, got {env!r}")
        return env

    def env(self, index: int, seed: int) -> Any:
        """The (cached) env of ``env_ids[index]``, reseeded with ``seed``."""
        if index not in self._envs:
            factory = self._factory(index)
            self._envs[index] = factory(
                num_envs=self.settings.vector_envs_per_task, seed=seed, device=self.settings.device
            )
        env = self._envs[index]
        env.set_seed(seed)
        return env

    def __call__(self, seed: int, env_index: int | None = None) -> RolloutCMDP:
        if env_index is None:
            gen = torch.Generator().manual_seed(int(seed))
            env_index = int(torch.randint(len(self.env_ids), (1,), generator=gen))
        env = self.env(env_index, seed)
        s = self.settings
        cuda = [s.device] if s.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(int(seed))
            actor = make_actor(env, hidden_layers=s.hidden_layers, device=s.device)
            critic = make_value_critic(env, hidden_layers=s.hidden_layers, device=s.device)
            cost_critic = make_cost_critic(env, hidden_layers=s.hidden_layers, device=s.device)
        options = {name: getattr(s, name) for name in _PROBLEM_OPTIONS}
        task = RolloutCMDP(env, actor, critic, cost_critic, **options)
        task.name = self.env_name(env_index)
        return task

    def close(self) -> None:
        """Close the cached envs."""
        for env in self._envs.values():
            if hasattr(env, "close"):
                env.close()
        self._envs.clear()
