"""Safety-Gymnasium tasks as batched TorchRL environments with ``cost`` beside ``reward``.

Keys (``B = num_envs``; see ``docs/design.md``):

==============================================  ==============  ===========================
key                                             shape           dtype
==============================================  ==============  ===========================
``observation`` (state-based tasks)             ``[B, obs]``    float32
one key per entry (vision tasks: ``vision``,    ``[B, *shape]`` float32 (``vision``: uint8
``accelerometer``, ``goal_lidar``, ...)                         ``[B, H, W, 3]``)
``action``                                      ``[B, act]``    float32 (clipped to bounds)
``("next", "reward")``, ``("next", "cost")``    ``[B, 1]``      float32 (reward spec)
``done``, ``terminated``, ``truncated``         ``[B, 1]``      bool
``episode_reward``, ``episode_cost``            ``[B, 1]``      float32 (``RewardSum``)
==============================================  ==============  ===========================

``cost`` lives in the *reward spec* (``Composite(reward=..., cost=...)``), so TorchRL's
``RewardSum``, ``GAE.set_keys(reward="cost", ...)``, collectors and ``step_mdp`` treat it as
the second reward signal it is.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import Compose, EnvBase, RewardSum, TransformedEnv

from cmo_rl.envs import compat as _compat  # noqa: F401  (import shim before safety_gymnasium)
from cmo_rl.envs.registry import is_vision_task, validate_env_id
from cmo_rl.envs.stable_vecnorm import BATCHED_WARNING, observation_norm

__all__ = ["SafetyGymnasiumBatchEnv", "make_safety_env", "observation_norm", "resolve_device"]

_CPU = torch.device("cpu")
_RESERVED_KEYS = frozenset(
    {"action", "reward", "cost", "done", "terminated", "truncated", "_reset", "next"}
)


def resolve_device(device: torch.device | str | int | None) -> torch.device:
    """``device`` as a :class:`torch.device`, or a ``ValueError`` if it cannot be used here.

    Examples:
        >>> resolve_device("cpu")
        device(type='cpu')
        >>> try:
        ...     resolve_device("tpu:0")
        ... except ValueError as error:
        ...     print(str(error).split(";")[0])
        unsupported device 'tpu:0'
    """
    if device is None:
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unsupported device {device!r}; use 'cpu' or 'cuda[:index]'") from err
    if resolved.type == "cpu":
        return resolved
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} requested but torch.cuda.is_available() is False; use 'cpu'"
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"device {device!r} requested but only {count} CUDA device(s) exist")
        return resolved
    if resolved.type == "mps" and torch.backends.mps.is_available():
        return resolved
    raise ValueError(f"unsupported device {device!r}; use 'cpu' or 'cuda[:index]'")


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _resolve_switch(
    name: str,
    env_id: str,
    wanted: bool | None,
    refusal: str | None,
    render_mode: str | None,
    rendering: str,
) -> bool:
    """A ``fast_reset``/``fast_step`` switch: ``None`` is on where the speed-up applies (no
    ``refusal``, no rendering); ``True`` where it does not is a ``ValueError`` naming why."""
    if refusal is None and render_mode is not None:
        refusal = f"render_mode={render_mode!r} {rendering}"
    if wanted is None:
        return refusal is None
    if wanted and refusal is not None:
        raise ValueError(f"{name}=True is not possible for {env_id!r}: {refusal}")
    return bool(wanted)


def _check_render_mode(env_id: str, render_mode: str | None) -> None:
    if render_mode is None:
        return
    from gymnasium.envs.registration import load_env_creator, registry

    entry_point = registry[env_id].entry_point
    creator = entry_point if callable(entry_point) else load_env_creator(entry_point)
    modes = list(getattr(creator, "metadata", {}).get("render_modes", []))
    if render_mode not in modes:
        raise ValueError(f"render_mode {render_mode!r} is not one of {modes} for {env_id!r}")


def _default_headless_gl() -> None:
    """Pick MuJoCo's EGL backend for offscreen rendering when there is no display.

    Without ``MUJOCO_GL`` gymnasium tries GLFW first, which "succeeds" without a display and then
    fails in ``mjr_makeContext``. Only sets the variable when the user has not.
    """
    if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["MUJOCO_GL"] = "egl"


class SafetyGymnasiumBatchEnv(EnvBase):
    r"""``num_envs`` Safety-Gymnasium envs of one task, stepped in one process as a batch.

    Each batched step loops over the raw (unwrapped) envs, writes their outputs into
    preallocated numpy arrays, and converts them to torch once:

    .. math::

        (o_t^i, r_t^i, c_t^i, \mathrm{term}_t^i, \mathrm{trunc}_t^i)
        = \mathrm{env}_i.\mathrm{step}(\mathrm{clip}(a_t^i, \underline a, \bar a)),
        \qquad \mathrm{trunc}_t^i \mathrel{|}= (t^i \ge T_{\max})

    where :math:`t^i` counts steps since sub-env ``i``'s last reset and :math:`T_{\max}` is the
    task's registered ``max_episode_steps`` (1000; 500 for Circle/Run) unless overridden.

    Why not TorchRL's stock ``torchrl.envs.libs.safety_gymnasium.SafetyGymnasiumEnv``: it
    reports ``cost`` as a float64 scalar *observation* (so ``RewardSum``, ``GAE`` and the reward
    spec do not see it, and it has no ``[*B, 1]`` shape), wraps one env per instance (a batch
    needs ``SerialEnv``/``ParallelEnv`` around it), and goes through ``GymLikeEnv``'s generic
    per-step machinery (spec-driven casting, info readers, the gymnasium wrapper stack): ~150 us
    of overhead per env step measured here, 3x a HalfCheetah physics step (~50 us), and paid
    again for every sub-env of a ``SerialEnv`` (16 HalfCheetahs: 4.5k steps/s vs 19.4k for this
    class). Here cost is a float32 reward entry and the overhead is paid once per *batch*.

    The raw envs are used without safety-gymnasium's wrappers (passive checker, order
    enforcing, ``SafeTimeLimit``): their checks are replaced by the specs and a "reset before
    stepping a finished sub-env" check, and truncation at :math:`T_{\max}` is done here.

    Args:
        env_id: a Safety-Gymnasium task id (see :func:`cmo_rl.envs.safety_task_ids`).
        num_envs: batch size ``B``.
        seed: if given, sub-env ``i`` is reset with seed ``seed + i`` on its next reset
            (same as calling :meth:`set_seed`).
        device: device of the produced tensors (the simulation itself runs on CPU).
        max_episode_steps: truncation horizon :math:`T_{\max}` (default: the task's).
        render_mode: forwarded to the raw envs (``"rgb_array"``, ``"depth_array"``, ``"human"``).
        fast_reset: skip render-only scene work on resets (:mod:`cmo_rl.envs.fast_reset`);
            ``None`` = on for state-based navigation tasks without ``render_mode``.
        fast_step: compute the task logic (observations, rewards, costs) of all sub-envs at
            once, bit-identical to stock (:mod:`cmo_rl.envs.fast_step`); ``None`` = on for the
            Goal/Button/Push/Circle tasks without ``render_mode``, off (stock) elsewhere.
        **task_kwargs: forwarded to ``safety_gymnasium.make`` (e.g. ``width``/``height`` for
            vision tasks, ``ctrl_cost_weight`` for velocity tasks).

    Partial resets follow TorchRL's batched-env protocol: ``reset(td)`` with a boolean
    ``"_reset"`` entry of shape ``[B, 1]`` resets only the flagged sub-envs.
    :attr:`raw_envs` exposes the unwrapped envs (e.g. to move the agent in tests).

    Examples:
        >>> env = SafetyGymnasiumBatchEnv("SafetyHalfCheetahVelocity-v1", num_envs=2, seed=0)
        >>> td = env.rollout(3)
        >>> td["next", "cost"].shape, td["next", "cost"].dtype, td["observation"].shape
        (torch.Size([2, 3, 1]), torch.float32, torch.Size([2, 3, 17]))
    """

    def __init__(
        self,
        env_id: str,
        num_envs: int = 1,
        *,
        seed: int | None = None,
        device: torch.device | str = "cpu",
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
        fast_reset: bool | None = None,
        fast_step: bool | None = None,
        _raw_envs: Sequence | None = None,
        **task_kwargs: Any,
    ) -> None:
        env_id = validate_env_id(env_id)
        num_envs = _check_positive_int("num_envs", num_envs)
        device = resolve_device(device)
        if max_episode_steps is not None:
            max_episode_steps = _check_positive_int("max_episode_steps", max_episode_steps)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        _check_render_mode(env_id, render_mode)
        from cmo_rl.envs.fast_reset import fast_reset_refusal
        from cmo_rl.envs.fast_step import fast_step_refusal

        self._fast_reset = _resolve_switch(
            "fast_reset",
            env_id,
            fast_reset,
            fast_reset_refusal(env_id),
            render_mode,
            "needs the render-only scene work fast resets skip",
        )
        use_fast_step = _resolve_switch(
            "fast_step",
            env_id,
            fast_step,
            fast_step_refusal(env_id),
            render_mode,
            "renders from per-step state only stock steps keep",
        )
        if render_mode is not None or is_vision_task(env_id):
            _default_headless_gl()

        import gymnasium
        import safety_gymnasium

        registered = gymnasium.envs.registry[env_id]
        self.env_id = env_id
        self.max_episode_steps: int = max_episode_steps or registered.max_episode_steps or 1000

        if _raw_envs is not None:  # adopted (see concatenate), already built and configured
            self._envs = list(_raw_envs)
        else:
            self._envs = [
                self._make_raw(safety_gymnasium, env_id, render_mode, task_kwargs)
                for _ in range(num_envs)
            ]

        self._stepper = self._make_stepper(fast_step) if use_fast_step else None
        super().__init__(batch_size=torch.Size([num_envs]), device=device)
        self._make_specs(self._envs[0])
        self._elapsed = np.zeros(num_envs, dtype=np.int64)
        self._needs_reset = np.ones(num_envs, dtype=bool)
        self._pending_seeds: list[int | None] = [None] * num_envs
        if seed is not None:
            self.set_seed(int(seed))

    @classmethod
    def concatenate(cls, envs: Sequence[SafetyGymnasiumBatchEnv]) -> SafetyGymnasiumBatchEnv:
        """One env over the sub-envs of ``envs`` (one task, horizon, device and ``fast_reset``
        / ``fast_step`` setting): sub-env ``k`` of ``envs[i]`` is sub-env
        ``envs[0].num_envs + ... + envs[i - 1].num_envs + k`` of the result. The raw envs are
        shared, not copied: step the whole or its parts, not both (each keeps its own
        done/reset bookkeeping). A batched fast stepper spans all of them.

        Examples:
            >>> parts = [SafetyGymnasiumBatchEnv("SafetyHalfCheetahVelocity-v1", 1, seed=s)
            ...          for s in (0, 1)]
            >>> whole = SafetyGymnasiumBatchEnv.concatenate(parts)
            >>> whole.num_envs, whole.raw_envs[1] is parts[1].raw_envs[0]
            (2, True)
        """
        settings = {
            (e.env_id, e.max_episode_steps, e.device, e.fast_reset, e.fast_step) for e in envs
        }
        if len(settings) != 1:
            raise ValueError(
                "concatenate needs envs (at least one) of one task, horizon, device and "
                f"fast_reset/fast_step setting, got {sorted(settings, key=str)}"
            )
        env_id, horizon, device, fast_reset, fast_step = settings.pop()
        raw = [r for env in envs for r in env.raw_envs]
        return cls(env_id, len(raw), device=device, max_episode_steps=horizon,
                   fast_reset=fast_reset, fast_step=fast_step, _raw_envs=raw)  # fmt: skip

    # ------------------------------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------------------------------

    def _make_raw(self, safety_gymnasium, env_id: str, render_mode: str | None, task_kwargs):
        kwargs = dict(task_kwargs)
        if render_mode is not None:
            kwargs["render_mode"] = render_mode
        try:
            wrapped = safety_gymnasium.make(env_id, disable_env_checker=True, **kwargs)
        except TypeError as err:
            raise ValueError(
                f"{env_id!r} rejected the keyword arguments {sorted(kwargs)}: {err}"
            ) from err
        raw = wrapped.unwrapped
        task = getattr(raw, "task", None)
        if task is not None:  # Builder tasks truncate themselves at task.num_steps
            task.num_steps = self.max_episode_steps
        if self._fast_reset:
            from cmo_rl.envs.fast_reset import enable_fast_reset

            enable_fast_reset(raw)
        return raw

    def _make_stepper(self, requested: bool | None):
        """The batched stepper; a config the id check cannot see may still refuse it."""
        from cmo_rl.envs.fast_step import fast_step_refusal, make_stepper

        reasons = {fast_step_refusal(env) for env in self._envs} - {None}
        if reasons:
            if requested:
                raise ValueError(f"fast_step=True is not possible for {self.env_id!r}: {reasons}")
            return None
        return make_stepper(self._envs)

    def _make_specs(self, raw) -> None:
        import gymnasium

        n = self.batch_size[0]
        device = self.device
        space = raw.observation_space
        if isinstance(space, gymnasium.spaces.Dict):
            spaces = dict(space.spaces)
        elif isinstance(space, gymnasium.spaces.Box):
            spaces = {"observation": space}
        else:
            raise ValueError(f"{self.env_id}: unsupported observation space {space}")
        clash = _RESERVED_KEYS.intersection(spaces)
        if clash:
            raise ValueError(f"{self.env_id}: observation entries clash with keys {sorted(clash)}")

        obs_specs = {}
        self._obs_buffers: dict[str, np.ndarray] = {}
        for key, sub in spaces.items():
            if not isinstance(sub, gymnasium.spaces.Box):
                raise ValueError(f"{self.env_id}: unsupported observation entry {key}: {sub}")
            shape = (n, *sub.shape)
            if np.issubdtype(sub.dtype, np.integer):  # images: keep uint8 pixels
                dtype = torch.from_numpy(np.empty(0, dtype=sub.dtype)).dtype
                low = torch.as_tensor(sub.low, dtype=dtype).expand(shape)
                high = torch.as_tensor(sub.high, dtype=dtype).expand(shape)
                obs_specs[key] = Bounded(low, high, shape=shape, dtype=dtype, device=device)
                self._obs_buffers[key] = np.zeros(shape, dtype=sub.dtype)
            else:
                obs_specs[key] = Unbounded(shape=shape, dtype=torch.float32, device=device)
                self._obs_buffers[key] = np.zeros(shape, dtype=np.float32)
        self._single_obs = list(spaces) == ["observation"] and not isinstance(
            space, gymnasium.spaces.Dict
        )
        self.observation_spec = Composite(obs_specs, shape=(n,), device=device)

        action_space = raw.action_space
        if not isinstance(action_space, gymnasium.spaces.Box) or len(action_space.shape) != 1:
            raise ValueError(f"{self.env_id}: unsupported action space {action_space}")
        self._action_low = np.asarray(action_space.low, dtype=action_space.dtype)
        self._action_high = np.asarray(action_space.high, dtype=action_space.dtype)
        self._action_dtype = action_space.dtype
        act_shape = (n, *action_space.shape)
        self.action_spec = Bounded(
            torch.as_tensor(self._action_low, dtype=torch.float32).expand(act_shape),
            torch.as_tensor(self._action_high, dtype=torch.float32).expand(act_shape),
            shape=act_shape,
            dtype=torch.float32,
            device=device,
        )
        self.reward_spec = Composite(
            reward=Unbounded(shape=(n, 1), dtype=torch.float32, device=device),
            cost=Unbounded(shape=(n, 1), dtype=torch.float32, device=device),
            shape=(n,),
            device=device,
        )
        self.done_spec = Composite(
            {
                key: Categorical(2, shape=(n, 1), dtype=torch.bool, device=device)
                for key in ("done", "terminated", "truncated")
            },
            shape=(n,),
            device=device,
        )
        self._reward = np.zeros((n, 1), dtype=np.float32)
        self._cost = np.zeros((n, 1), dtype=np.float32)
        self._terminated = np.zeros((n, 1), dtype=bool)
        self._truncated = np.zeros((n, 1), dtype=bool)

    # ------------------------------------------------------------------------------------------
    # public helpers
    # ------------------------------------------------------------------------------------------

    @property
    def raw_envs(self) -> tuple:
        """The unwrapped Safety-Gymnasium envs, sub-env ``i`` at index ``i``."""
        return tuple(self._envs)

    @property
    def num_envs(self) -> int:
        return self.batch_size[0]

    @property
    def fast_reset(self) -> bool:
        """Whether the raw envs reset through :mod:`cmo_rl.envs.fast_reset`."""
        return self._fast_reset

    @property
    def fast_step(self) -> bool:
        """Whether steps compute the task logic batched (:mod:`cmo_rl.envs.fast_step`)."""
        return self._stepper is not None

    @property
    def observation_keys(self) -> list[str]:
        """The observation entries, in the raw env's order."""
        return list(self._obs_buffers)

    def render(self, index: int = 0) -> Any:
        """``raw_envs[index].render()`` (needs ``render_mode`` at construction)."""
        return self._envs[index].render()

    def close(self, *, raise_if_closed: bool = True) -> None:
        for env in self.__dict__.get("_envs", ()):
            env.close()
        super().close(raise_if_closed=raise_if_closed)

    # ------------------------------------------------------------------------------------------
    # EnvBase API
    # ------------------------------------------------------------------------------------------

    def _set_seed(self, seed: int | None) -> None:
        """Sub-env ``i`` gets ``seed + i`` at its next reset (``None``: keep the RNG streams)."""
        n = self.batch_size[0]
        self.seed_sub_envs([None] * n if seed is None else [int(seed) + i for i in range(n)])

    def seed_sub_envs(self, seeds: Sequence[int | None]) -> None:
        """Sub-env ``i`` gets ``seeds[i]`` at its next reset (``None``: keep its RNG stream).

        Examples:
            >>> env = SafetyGymnasiumBatchEnv("SafetyHalfCheetahVelocity-v1", 2)
            >>> env.seed_sub_envs([7, 3])
            >>> a = env.reset()["observation"]
            >>> env.seed_sub_envs([3, 7])
            >>> b = env.reset()["observation"]
            >>> torch.equal(a, b.flip(0))
            True
        """
        if len(seeds) != self.batch_size[0]:
            raise ValueError(f"{len(seeds)} seeds for {self.batch_size[0]} sub-envs")
        self._pending_seeds = [None if s is None else int(s) for s in seeds]

    def _write_obs(self, i: int, obs: Any) -> None:
        if self._single_obs:
            self._obs_buffers["observation"][i] = obs
        else:
            for key, buffer in self._obs_buffers.items():
                buffer[i] = obs[key]

    def _observation_tensors(self) -> dict[str, torch.Tensor]:
        return {key: torch.from_numpy(buf.copy()) for key, buf in self._obs_buffers.items()}

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        if tensordict is not None and "_reset" in tensordict.keys():
            mask = tensordict.get("_reset").reshape(self.batch_size).cpu().numpy()
            indices = np.flatnonzero(mask)
        else:
            indices = range(self.batch_size[0])
        for i in indices:
            seed, self._pending_seeds[i] = self._pending_seeds[i], None
            obs, _ = self._envs[i].reset(seed=seed)
            self._write_obs(i, obs)
            self._elapsed[i] = 0
            self._needs_reset[i] = False
        false = torch.zeros((*self.batch_size, 1), dtype=torch.bool)
        source = self._observation_tensors()
        source.update(done=false, terminated=false.clone(), truncated=false.clone())
        return self._to_tensordict(source)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        if self._needs_reset.any():
            stale = np.flatnonzero(self._needs_reset).tolist()
            raise RuntimeError(
                f"sub-envs {stale} of {self.env_id} are done (or were never reset); "
                "reset them (env.reset(td) with a '_reset' mask, or env.rollout / a collector, "
                "which do it) before stepping"
            )
        action = tensordict.get("action").detach().cpu().numpy()
        action = np.clip(action, self._action_low, self._action_high).astype(
            self._action_dtype, copy=False
        )
        reward, cost = self._reward, self._cost
        terminated, truncated = self._terminated, self._truncated
        if self._stepper is not None:
            obs, reward[:, 0], cost[:, 0], terminated[:, 0], truncated[:, 0] = self._stepper.step(
                action
            )
            self._obs_buffers["observation"][:] = obs
            return self._finish_step()
        # 1-D views: assigning a scalar to ``x[i]`` of a [B] array is ~3x cheaper than of [B, 1]
        r, c, term, trunc = reward[:, 0], cost[:, 0], terminated[:, 0], truncated[:, 0]
        write_obs = self._write_obs
        single = self._obs_buffers["observation"] if self._single_obs else None
        for i, env in enumerate(self._envs):
            obs, r[i], c[i], term[i], trunc[i], _ = env.step(action[i])
            if single is not None:
                single[i] = obs
            else:
                write_obs(i, obs)
        return self._finish_step()

    def _finish_step(self) -> TensorDictBase:
        reward, cost = self._reward, self._cost
        terminated, truncated = self._terminated, self._truncated
        self._elapsed += 1
        truncated |= (self._elapsed >= self.max_episode_steps)[:, None]
        done = terminated | truncated
        self._needs_reset[:] = done[:, 0]
        source = self._observation_tensors()
        source.update(
            reward=torch.from_numpy(reward.copy()),
            cost=torch.from_numpy(cost.copy()),
            done=torch.from_numpy(done),
            terminated=torch.from_numpy(terminated.copy()),
            truncated=torch.from_numpy(truncated.copy()),
        )
        return self._to_tensordict(source)

    def _to_tensordict(self, source: dict[str, torch.Tensor]) -> TensorDictBase:
        """CPU tensors of the spec'd shapes/dtypes -> a TensorDict on ``self.device``.

        The entries are built here with the exact spec shapes and dtypes, so the validating
        ``TensorDict`` constructor (~15 us) is skipped.
        """
        out = TensorDict._new_unsafe(source, batch_size=self.batch_size, device=_CPU)
        return out if self.device == _CPU else out.to(self.device, non_blocking=True)

    def _step_proc_data(self, next_tensordict_out: TensorDictBase) -> TensorDictBase:
        # ``EnvBase._step_proc_data`` reshapes rewards and fills missing done keys: ``_step``
        # already returns every key with its spec shape, so only the opt-in type checks remain.
        if self.run_type_checks:
            return super()._step_proc_data(next_tensordict_out)
        return next_tensordict_out


def make_safety_env(
    env_id: str,
    num_envs: int = 1,
    seed: int | None = None,
    device: torch.device | str = "cpu",
    *,
    normalize_observations: bool = False,
    fast_reset: bool | None = None,
    fast_step: bool | None = None,
    render_mode: str | None = None,
    max_episode_steps: int | None = None,
    episode_sums: bool = True,
    **task_kwargs: Any,
) -> TransformedEnv:
    """A :class:`SafetyGymnasiumBatchEnv` in a ``TransformedEnv`` with episode sums (and norms).

    Transforms, in order:

    * ``episode_sums=True``: ``RewardSum(in_keys=["reward", "cost"],
      out_keys=["episode_reward", "episode_cost"])``; at an episode end
      ``td["next", "episode_cost"][td["next", "done"]]`` are the finished episodes' costs;
    * ``normalize_observations=True``: :func:`observation_norm` (``VecNormV2``) on every float
      observation entry, statistics pooled over the batch.

    Every argument is checked (``ValueError``) before any env is built; see
    :class:`SafetyGymnasiumBatchEnv` for the others.

    Examples:
        >>> env = make_safety_env("SafetyHalfCheetahVelocity-v1", num_envs=2, seed=0,
        ...                       max_episode_steps=5)
        >>> td = env.rollout(5)
        >>> sums = td["next", "episode_cost"][:, -1]
        >>> bool(td["next", "truncated"][:, -1].all()), torch.equal(sums, td["next", "cost"].sum(1))
        (True, True)
    """
    base = SafetyGymnasiumBatchEnv(
        env_id,
        num_envs,
        seed=seed,
        device=device,
        max_episode_steps=max_episode_steps,
        render_mode=render_mode,
        fast_reset=fast_reset,
        fast_step=fast_step,
        **task_kwargs,
    )
    transforms = []
    if episode_sums:
        transforms.append(
            RewardSum(in_keys=["reward", "cost"], out_keys=["episode_reward", "episode_cost"])
        )
    if normalize_observations:  # last: transforms before it get cloned when it finds its parent
        spec = base.observation_spec
        keys = [k for k in base.observation_keys if spec[k].dtype.is_floating_point]
        transforms.append(observation_norm(keys))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=BATCHED_WARNING)
        return TransformedEnv(base, Compose(*transforms))
