"""On-policy data collection: one ``Collector`` batch per epoch, and finished-episode statistics.

Every epoch starts from freshly reset envs seeded with :func:`cmo_rl.seeding.epoch_seed`
``(seed, epoch)``, so
an epoch's data depends only on the policy, the global RNG state and the epoch index, never on
where the previous epoch stopped. That is what makes ``resume`` reproduce an uninterrupted run
exactly (the envs' internal state never needs to be checkpointed). Choose
``steps_per_epoch / num_envs`` as a multiple of the episode length so that no episode is cut at
the epoch boundary (a cut episode is bootstrapped by GAE but never counted as finished).

Batch keys (``B = num_envs``, ``T = steps_per_epoch / B``): everything of
:func:`cmo_rl.envs.factory.make_env` plus the actor's ``loc``, ``scale``, ``action``,
``action_log_prob``, shape ``[B, T]``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from tensordict import TensorDictBase
from torchrl.collectors import Collector
from torchrl.envs import EnvBase

from cmo_rl.seeding import epoch_seed
from cmo_rl.training.parallel import WorkerCollector, WorkerSpec

__all__ = ["EpisodeStats", "finished_episodes", "make_collector"]


class _EpochSeeder:
    """``pre_collect_hook`` of the collector: seeds the env for the next epoch, then counts it."""

    def __init__(self, env: EnvBase, seed: int, first_epoch: int) -> None:
        self.env, self.seed, self.epoch = env, int(seed), int(first_epoch)

    def __call__(self) -> None:
        self.env.set_seed(epoch_seed(self.seed, self.epoch), static_seed=True)
        self.epoch += 1


def make_collector(
    env: EnvBase,
    policy: torch.nn.Module,
    *,
    steps_per_epoch: int,
    num_epochs: int,
    seed: int,
    first_epoch: int = 0,
    device: torch.device | str = "cpu",
    workers: WorkerSpec | None = None,
) -> Collector | WorkerCollector:
    """A TorchRL ``Collector`` yielding one ``[num_envs, steps_per_epoch / num_envs]`` batch per epoch.

    Args:
        env: a batched env (e.g. :func:`cmo_rl.envs.factory.make_env`), stepping on CPU.
        policy: the actor; it runs on ``device`` (the batch is stored there too).
        steps_per_epoch: frames per batch, all envs together (a multiple of ``num_envs``).
        num_epochs: epochs of the whole run.
        seed: the run's seed (envs are re-seeded each epoch with
            :func:`~cmo_rl.seeding.epoch_seed`).
        first_epoch: index of the first epoch this collector collects (``> 0`` when resuming).
        device: policy and storage device.
        workers: collect in worker processes or Ray actors instead
            (:func:`cmo_rl.training.parallel.worker_spec` of the config's ``collector:`` block;
            ``None``: in this process). Returns a :class:`~cmo_rl.training.parallel.WorkerCollector`
            that yields the same batch layout.

    The envs are reset at the start of every batch (``reset_at_each_iter=True``), after seeding.

    Examples:
        >>> from cmo_rl.envs.factory import make_env
        >>> from cmo_rl.modules import make_actor
        >>> env = make_env("MockCMDP-v0", num_envs=2, seed=0, max_episode_steps=4)
        >>> collector = make_collector(env, make_actor(env, hidden_layers=(4,)), steps_per_epoch=8,
        ...                            num_epochs=3, seed=0, first_epoch=1)
        >>> [tuple(batch.shape) for batch in collector]  # epochs 1 and 2 are left
        [(2, 4), (2, 4)]
    """
    num_envs = int(env.batch_size.numel()) if env.batch_size else 1
    if steps_per_epoch < 1 or steps_per_epoch % num_envs:
        raise ValueError(
            f"steps_per_epoch ({steps_per_epoch}) must be a positive multiple of num_envs "
            f"({num_envs})"
        )
    remaining = int(num_epochs) - int(first_epoch)
    if remaining < 1:
        raise ValueError(
            f"no epoch left to collect: first_epoch={first_epoch}, num_epochs={num_epochs}"
        )
    if workers is not None:
        return WorkerCollector(
            env,
            policy,
            workers,
            steps_per_epoch=steps_per_epoch,
            num_epochs=num_epochs,
            seed=seed,
            first_epoch=first_epoch,
            device=device,
        )
    device = torch.device(device)
    return Collector(
        env,
        policy,
        frames_per_batch=int(steps_per_epoch),
        total_frames=remaining * int(steps_per_epoch),
        reset_at_each_iter=True,
        pre_collect_hook=_EpochSeeder(env, seed, first_epoch),
        env_device="cpu",
        policy_device=device,
        storing_device=device,
        auto_register_policy_transforms=False,
    )


class EpisodeStats(NamedTuple):
    """Per-episode ``returns``, ``costs`` and ``lengths`` (float ``[n]`` tensors, CPU).

    Examples:
        >>> stats = EpisodeStats(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 4.0]), torch.ones(2))
        >>> stats.count, float(stats.costs.max())
        (2, 4.0)
    """

    returns: torch.Tensor
    costs: torch.Tensor
    lengths: torch.Tensor

    @property
    def count(self) -> int:
        return int(self.returns.numel())

    def metrics(self, prefix: str) -> dict[str, float]:
        """``{prefix}/episode_return``, ``_cost``, ``_length`` (means) and ``num_episodes``.

        With no episode only ``{prefix}/num_episodes = 0`` is returned.

        Examples:
            >>> s = EpisodeStats(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 4.0]), torch.tensor([5.0, 5.0]))
            >>> s.metrics("train")
            {'train/num_episodes': 2, 'train/episode_return': 2.0, 'train/episode_cost': 2.0, 'train/episode_length': 5.0}
        """
        out: dict[str, float] = {f"{prefix}/num_episodes": self.count}
        if self.count:
            out[f"{prefix}/episode_return"] = float(self.returns.double().mean())
            out[f"{prefix}/episode_cost"] = float(self.costs.double().mean())
            out[f"{prefix}/episode_length"] = float(self.lengths.double().mean())
        return out


def finished_episodes(batch: TensorDictBase) -> EpisodeStats:
    """Return, cost and length of every episode that finished inside ``batch``.

    Reads ``("next", "done")`` and, where it is set, ``("next", "episode_reward")``,
    ``("next", "episode_cost")`` (``RewardSum``) and ``("next", "step_count")``
    (``StepCounter``; absent: lengths are NaN). Any batch shape; entries with ``[*B, 1]``.

    Examples:
        >>> from tensordict import TensorDict
        >>> done = torch.tensor([[[False], [True], [False]]])
        >>> batch = TensorDict({"next": {"done": done,
        ...     "episode_reward": torch.tensor([[[1.0], [2.0], [0.5]]]),
        ...     "episode_cost": torch.tensor([[[0.0], [3.0], [1.0]]]),
        ...     "step_count": torch.tensor([[[1], [2], [1]]])}}, batch_size=[1, 3])
        >>> finished_episodes(batch)
        EpisodeStats(returns=tensor([2.]), costs=tensor([3.]), lengths=tensor([2.]))
    """
    nxt = batch.get("next", None)
    if nxt is None or "done" not in nxt.keys():
        raise KeyError("the batch has no ('next', 'done') entry")
    for key in ("episode_reward", "episode_cost"):
        if key not in nxt.keys():
            raise KeyError(
                f"the batch has no ('next', {key!r}): build the env with a RewardSum over "
                "reward and cost (cmo_rl.envs.factory.make_env does)"
            )
    done = nxt.get("done").squeeze(-1)

    def pick(key: str) -> torch.Tensor:
        return nxt.get(key).squeeze(-1)[done].detach().float().cpu()

    returns, costs = pick("episode_reward"), pick("episode_cost")
    if "step_count" in nxt.keys():
        lengths = pick("step_count")
    else:
        lengths = torch.full_like(returns, float("nan"))
    return EpisodeStats(returns, costs, lengths)
