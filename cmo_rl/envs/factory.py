"""One entry point for every env the recipes train on: Safety-Gymnasium tasks and the mock CMDP.

``make_env(env_id, ...)`` returns a ``TransformedEnv`` with the same keys whatever the task:

==============================================  ==============  ==================================
key                                             shape           written by
==============================================  ==============  ==================================
``observation``                                 ``[B, obs]``    env (normalised if asked)
``("next", "reward")``, ``("next", "cost")``    ``[B, 1]``      env
``episode_reward``, ``episode_cost``            ``[B, 1]``      ``RewardSum``
``step_count``                                  ``[B, 1]``      ``StepCounter`` (episode length)
==============================================  ==============  ==================================

``"MockCMDP-v0"`` is :class:`cmo_rl.testing.MockCMDPEnv` (milliseconds per step, for tests and
smoke runs); every other id goes to :func:`cmo_rl.envs.make_safety_env`.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torchrl.envs import Compose, RewardSum, StepCounter, TransformedEnv

from cmo_rl.envs.stable_vecnorm import BATCHED_WARNING

__all__ = ["MOCK_ENV_ID", "make_env", "max_episode_steps", "observation_norm_of"]

#: The task id that selects :class:`cmo_rl.testing.MockCMDPEnv`.
MOCK_ENV_ID = "MockCMDP-v0"
_MOCK_DEFAULT_EPISODE = 50


def make_env(
    env_id: str,
    num_envs: int = 1,
    seed: int | None = None,
    device: torch.device | str = "cpu",
    *,
    normalize_observations: bool = False,
    max_episode_steps: int | None = None,
    **kw: Any,
) -> TransformedEnv:
    """A batched CMDP with ``cost`` beside ``reward``, episode sums and an episode step counter.

    Args:
        env_id: a Safety-Gymnasium task id, or ``"MockCMDP-v0"``.
        num_envs: batch size ``B`` (sub-envs stepped together).
        seed: seed of the sub-envs (``None``: unseeded).
        device: device of the produced tensors (the simulation runs on CPU).
        normalize_observations: running mean/std normalisation of the observation
            (:func:`cmo_rl.envs.observation_norm`, pooled over the batch).
        max_episode_steps: truncation horizon (``None``: the task's; 50 for the mock).
        **kw: forwarded to :func:`cmo_rl.envs.make_safety_env` (e.g. ``fast_reset``) or, for the
            mock, to :class:`~cmo_rl.testing.MockCMDPEnv` (no extra keywords are accepted).

    Transforms, in order: ``RewardSum(["reward", "cost"] -> ["episode_reward",
    "episode_cost"])``, ``StepCounter()``, the observation norm (if asked; as in
    :func:`~cmo_rl.envs.make_safety_env`, over every float observation entry).

    Examples:
        >>> env = make_env("MockCMDP-v0", num_envs=2, seed=0, max_episode_steps=3)
        >>> td = env.rollout(3)
        >>> td["next", "step_count"][:, -1].flatten().tolist(), bool(td["next", "done"][:, -1].all())
        ([3, 3], True)
    """
    from cmo_rl.envs.stable_vecnorm import observation_norm

    if env_id == MOCK_ENV_ID:
        from cmo_rl.testing import MockCMDPEnv

        if kw:
            raise ValueError(f"{MOCK_ENV_ID} takes no extra keyword arguments, got {sorted(kw)}")
        base = MockCMDPEnv(
            num_envs=num_envs,
            episode_length=_MOCK_DEFAULT_EPISODE
            if max_episode_steps is None
            else max_episode_steps,
            seed=seed,
            device=device,
        )
        env = TransformedEnv(
            base,
            Compose(
                RewardSum(in_keys=["reward", "cost"], out_keys=["episode_reward", "episode_cost"])
            ),
        )
        norm_keys = ["observation"]
    else:
        from cmo_rl.envs.safety import make_safety_env

        env = make_safety_env(
            env_id,
            num_envs,
            seed=seed,
            device=device,
            normalize_observations=False,
            max_episode_steps=max_episode_steps,
            **kw,
        )
        spec = env.base_env.observation_spec
        norm_keys = [k for k in env.base_env.observation_keys if spec[k].dtype.is_floating_point]
    env.append_transform(StepCounter())
    if normalize_observations:  # last, so that rebuilding the others' parents never copies it
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=BATCHED_WARNING)
            env.append_transform(observation_norm(norm_keys))
            env.output_spec  # noqa: B018 (builds and caches the specs: no warning later)
    return env


def max_episode_steps(env: TransformedEnv) -> int:
    """The truncation horizon of an env built by :func:`make_env`.

    Examples:
        >>> max_episode_steps(make_env("MockCMDP-v0", max_episode_steps=7))
        7
    """
    base = env.base_env
    for name in ("max_episode_steps", "episode_length"):
        value = getattr(base, name, None)
        if value is not None:
            return int(value)
    raise ValueError(f"{type(base).__name__} exposes no episode horizon")


def observation_norm_of(env: TransformedEnv) -> torch.nn.Module | None:
    """The observation-normalisation transform of ``env`` (``VecNormV2``), or ``None``.

    Examples:
        >>> observation_norm_of(make_env("MockCMDP-v0")) is None
        True
        >>> type(observation_norm_of(make_env("MockCMDP-v0", normalize_observations=True))).__name__
        'StableVecNorm'
    """
    from torchrl.envs.transforms.vecnorm import VecNormV2

    for transform in env.transform:
        if isinstance(transform, VecNormV2):
            return transform
    return None
