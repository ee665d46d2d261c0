"""Evaluation episodes with the deterministic policy: one episode per sub-env of an eval env.

The eval env is separate from the training env. Its observation normaliser gets a frozen copy of
the training statistics (:func:`sync_observation_norm`) so that the policy sees the inputs it
was trained on and evaluation never moves the training statistics.
"""

from __future__ import annotations

import torch
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type

from cmo_rl.envs.factory import observation_norm_of
from cmo_rl.training.collection import EpisodeStats

__all__ = ["eval_metrics", "evaluate_policy", "sync_observation_norm"]


def sync_observation_norm(source: EnvBase, target: EnvBase) -> None:
    """Copy ``source``'s observation-norm statistics into ``target``'s and freeze ``target``'s.

    A no-op when neither env normalises observations; ``ValueError`` when only one does.

    Examples:
        >>> from cmo_rl.envs.factory import make_env
        >>> train = make_env("MockCMDP-v0", num_envs=2, seed=0, normalize_observations=True)
        >>> _ = train.rollout(5)
        >>> evaluation = make_env("MockCMDP-v0", num_envs=2, seed=1, normalize_observations=True)
        >>> sync_observation_norm(train, evaluation)
        >>> norm = observation_norm_of(evaluation)
        >>> norm.frozen, torch.equal(norm.loc["observation"], observation_norm_of(train).loc["observation"])
        (True, True)
    """
    src, dst = observation_norm_of(source), observation_norm_of(target)
    if src is None and dst is None:
        return
    if src is None or dst is None:
        raise ValueError(
            "both envs must normalise observations, or neither: "
            f"source has {'a' if src is not None else 'no'} norm, "
            f"target has {'a' if dst is not None else 'no'} norm"
        )
    state = {
        k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in src.state_dict().items()
    }
    extra = state.get("_extra_state")
    if isinstance(extra, dict):  # the statistics themselves: never share storage with the source
        state["_extra_state"] = {k: v.clone() for k, v in extra.items()}
    dst.load_state_dict(state)
    dst.freeze()


def evaluate_policy(
    env: EnvBase,
    policy: torch.nn.Module,
    *,
    max_steps: int,
    seed: int | None = None,
    device: torch.device | str | None = None,
) -> EpisodeStats:
    """Run one deterministic episode in each of ``env``'s ``B`` sub-envs.

    Actions are the policy's mode (``ExplorationType.DETERMINISTIC``: the Gaussian mean clipped
    to the bounds). Each sub-env's first episode is recorded; sub-envs that finish early are reset
    and keep stepping (ignored) until all have finished.

    Args:
        env: batched env with ``RewardSum`` (and ``StepCounter``), e.g. from
            :func:`cmo_rl.envs.factory.make_env`.
        policy: the actor (on ``device``).
        max_steps: steps after which an unfinished episode is an error (the env's horizon).
        seed: if given, sub-env ``i`` is seeded with ``seed + i`` before the reset.
        device: the policy's device (``None``: the env's).

    Returns:
        :class:`~cmo_rl.training.collection.EpisodeStats` with ``B`` episodes.

    Examples:
        >>> from cmo_rl.envs.factory import make_env
        >>> from torchrl.modules import SafeModule
        >>> env = make_env("MockCMDP-v0", num_envs=3, max_episode_steps=4)
        >>> always_half = SafeModule(lambda obs: torch.full((*obs.shape[:-1], 1), 0.5),
        ...                          in_keys=["observation"], out_keys=["action"])
        >>> stats = evaluate_policy(env, always_half, max_steps=4, seed=0)
        >>> stats.returns, stats.lengths  # reward = action = 0.5 for 4 steps
        (tensor([2., 2., 2.]), tensor([4., 4., 4.]))
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    n = int(env.batch_size.numel()) if env.batch_size else 1
    env_device = env.device if env.device is not None else torch.device("cpu")
    device = env_device if device is None else torch.device(device)
    if seed is not None:
        env.set_seed(int(seed), static_seed=True)
    finished = torch.zeros(n, dtype=torch.bool)
    returns, costs, lengths = torch.zeros(n), torch.zeros(n), torch.full((n,), float("nan"))
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        td = env.reset()
        for _ in range(int(max_steps)):
            td = policy(td.to(device)).to(env_device)
            td, next_td = env.step_and_maybe_reset(td)
            nxt = td.get("next")
            done = nxt.get("done").reshape(n).cpu()
            new = done & ~finished
            if bool(new.any()):
                returns[new] = nxt.get("episode_reward").reshape(n).float().cpu()[new]
                costs[new] = nxt.get("episode_cost").reshape(n).float().cpu()[new]
                if "step_count" in nxt.keys():
                    lengths[new] = nxt.get("step_count").reshape(n).float().cpu()[new]
                finished |= done
                if bool(finished.all()):
                    break
            td = next_td
    if not bool(finished.all()):
        raise RuntimeError(
            f"{int((~finished).sum())} of {n} evaluation episodes did not finish within "
            f"max_steps={max_steps}; pass the env's episode horizon"
        )
    return EpisodeStats(returns, costs, lengths)


def eval_metrics(stats: EpisodeStats, cost_limit: float) -> dict[str, float]:
    """The ``eval/...`` metrics of ``docs/metrics.md`` for ``stats`` and limit ``d``.

    Examples:
        >>> s = EpisodeStats(torch.tensor([10.0, 20.0]), torch.tensor([5.0, 30.0]), torch.tensor([9.0, 9.0]))
        >>> eval_metrics(s, cost_limit=25.0)["eval/constraint_satisfaction"]
        0.5
    """
    out = stats.metrics("eval")
    if stats.count:
        out["eval/constraint_satisfaction"] = float((stats.costs <= cost_limit).double().mean())
    return out
