"""A tiny constrained MDP with a known reward/cost trade-off, for fast unit tests.

It emits exactly the keys of :func:`cmo_rl.envs.make_safety_env` (``observation``, ``action``,
``reward`` and ``cost`` in the reward spec, ``done``/``terminated``/``truncated``), so every
component can be unit-tested in milliseconds without MuJoCo.

Dynamics (per sub-env, ``s ~ U(-1, 1)`` drawn fresh each step from a seeded generator):

.. math::

    r_t = a_t, \\qquad c_t = \\max(0, a_t)\\,\\frac{1 + s_t}{2}, \\qquad a_t \\in [-1, 1]

The observation is ``[s_t, t / T]``. Episodes are truncated after ``episode_length`` steps
(``T``). The unconstrained optimum ``a = 1`` earns return ``T`` at expected cost ``T / 2``; any
cost limit ``d < T / 2`` makes the constraint bind, and the constrained optimum pushes ``a`` up
where ``s`` is low (cheap) and down where it is high (expensive). ``a = 0`` is always safe.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

__all__ = ["MockCMDPEnv"]


class MockCMDPEnv(EnvBase):
    """Batched mock CMDP with ``reward`` and ``cost`` in its reward spec.

    Args:
        num_envs: batch size of the env (``batch_size=[num_envs]``).
        episode_length: steps before truncation (``T``).
        seed: optional seed (else call :meth:`set_seed`).
        device: device of the produced tensors.

    Keys (``B = num_envs``): ``observation`` float32 ``[B, 2]``, ``action`` float32 ``[B, 1]``,
    ``("next", "reward")`` and ``("next", "cost")`` float32 ``[B, 1]``, ``done`` /
    ``terminated`` / ``truncated`` bool ``[B, 1]``.

    Examples:
        >>> env = MockCMDPEnv(num_envs=3, episode_length=4, seed=0)
        >>> td = env.rollout(4)
        >>> td["next", "cost"].shape, bool(td["next", "truncated"][:, -1].all())
        (torch.Size([3, 4, 1]), True)
    """

    def __init__(
        self,
        num_envs: int = 1,
        episode_length: int = 50,
        seed: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if episode_length < 1:
            raise ValueError(f"episode_length must be >= 1, got {episode_length}")
        super().__init__(batch_size=torch.Size([num_envs]), device=device)
        self.episode_length = episode_length
        shape = (num_envs,)
        self.observation_spec = Composite(
            observation=Unbounded(shape=(*shape, 2), dtype=torch.float32, device=self.device),
            shape=shape,
            device=self.device,
        )
        self.action_spec = Bounded(
            -1.0, 1.0, shape=(*shape, 1), dtype=torch.float32, device=self.device
        )
        self.reward_spec = Composite(
            reward=Unbounded(shape=(*shape, 1), dtype=torch.float32, device=self.device),
            cost=Unbounded(shape=(*shape, 1), dtype=torch.float32, device=self.device),
            shape=shape,
            device=self.device,
        )
        self.done_spec = Composite(
            done=Categorical(2, shape=(*shape, 1), dtype=torch.bool, device=self.device),
            terminated=Categorical(2, shape=(*shape, 1), dtype=torch.bool, device=self.device),
            truncated=Categorical(2, shape=(*shape, 1), dtype=torch.bool, device=self.device),
            shape=shape,
            device=self.device,
        )
        self._generator = torch.Generator()
        self._t = torch.zeros(shape, dtype=torch.long)
        self._s = torch.zeros(shape)
        self.set_seed(0 if seed is None else seed)

    def _set_seed(self, seed: int | None) -> None:
        self._generator.manual_seed(int(seed) if seed is not None else 0)

    def _draw_state(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self._generator) * 2.0 - 1.0

    def _observation(self) -> torch.Tensor:
        phase = self._t.float() / self.episode_length
        return torch.stack([self._s, phase], dim=-1).to(self.device)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        if tensordict is not None and "_reset" in tensordict.keys():
            mask = tensordict["_reset"].reshape(self.batch_size).cpu()
        else:
            mask = torch.ones(self.batch_size, dtype=torch.bool)
        self._t[mask] = 0
        self._s[mask] = self._draw_state(int(mask.sum()))
        false = torch.zeros((*self.batch_size, 1), dtype=torch.bool, device=self.device)
        return TensorDict(
            observation=self._observation(),
            done=false,
            terminated=false.clone(),
            truncated=false.clone(),
            batch_size=self.batch_size,
            device=self.device,
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict["action"].reshape(*self.batch_size).cpu().clamp(-1.0, 1.0)
        reward = action.clone()
        cost = action.clamp_min(0.0) * (1.0 + self._s) / 2.0
        self._t += 1
        self._s = self._draw_state(self.batch_size[0])
        truncated = (self._t >= self.episode_length).unsqueeze(-1)
        terminated = torch.zeros_like(truncated)
        return TensorDict(
            observation=self._observation(),
            reward=reward.unsqueeze(-1).to(self.device),
            cost=cost.unsqueeze(-1).to(self.device),
            done=truncated.to(self.device),
            terminated=terminated.to(self.device),
            truncated=truncated.to(self.device),
            batch_size=self.batch_size,
            device=self.device,
        )
