"""Building a recipe's objects from its config: threads, training/eval envs, networks,
estimators, the run's collector (seeds: :func:`cmo_rl.seeding.seed_everything`).

The config keys read here are those of :data:`cmo_rl.training.schema.COMMON`. Every baseline
recipe (``recipes/cpo.py``, and :func:`cmo_rl.training.lagrangian_ppo.train_lagrangian_ppo`
behind ``recipes/ppo_lagrangian.py`` and ``recipes/pid_lagrangian.py``) builds its objects with
these functions, one call per object, in the same order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torchrl.collectors import Collector
from torchrl.envs import EnvBase, TransformedEnv
from torchrl.objectives.value import GAE

from cmo_rl.envs.factory import make_env
from cmo_rl.modules import ActorCritic, actor_critic_from_env
from cmo_rl.objectives import make_value_estimators
from cmo_rl.training.collection import make_collector
from cmo_rl.training.parallel import WorkerCollector, worker_spec

if TYPE_CHECKING:
    from cmo_rl.training.run import TrainingRun

__all__ = [
    "make_agent",
    "make_envs",
    "make_estimators",
    "make_run_collector",
    "set_torch_threads",
]


def set_torch_threads(threads: int) -> None:
    """``torch.set_num_threads(threads)``; ``0`` keeps torch's default.

    The networks here are tiny: on a shared CPU, one intra-op thread is often several times
    faster than two that spin-wait for each other, and a fixed count keeps float reductions
    reproducible from run to run.

    Examples:
        >>> before = torch.get_num_threads()
        >>> set_torch_threads(0)  # 0: leave torch's default alone
        >>> torch.get_num_threads() == before
        True
    """
    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    if threads:
        torch.set_num_threads(int(threads))


def make_envs(cfg: Mapping[str, Any]) -> tuple[TransformedEnv, TransformedEnv]:
    """The training env (``num_envs`` sub-envs) and the eval env (``eval_episodes`` sub-envs).

    Both step on CPU and share the task options (``env_id``, ``episode_length``,
    ``normalize_observations``); the eval env's normaliser is synced from the training env
    before each evaluation (:func:`cmo_rl.training.rollout_eval.sync_observation_norm`).

    Examples:
        >>> cfg = {"env_id": "MockCMDP-v0", "num_envs": 4, "eval_episodes": 2, "seed": 0,
        ...        "episode_length": 10, "normalize_observations": True}
        >>> env, eval_env = make_envs(cfg)
        >>> tuple(env.batch_size), tuple(eval_env.batch_size)
        ((4,), (2,))
    """
    options = {
        "normalize_observations": bool(cfg["normalize_observations"]),
        "max_episode_steps": cfg["episode_length"],
    }
    env = make_env(cfg["env_id"], int(cfg["num_envs"]), seed=int(cfg["seed"]), **options)
    eval_env = make_env(cfg["env_id"], int(cfg["eval_episodes"]), seed=int(cfg["seed"]), **options)
    return env, eval_env


def make_agent(cfg: Mapping[str, Any], env: TransformedEnv, device: torch.device) -> ActorCritic:
    """``ActorCritic(actor, critic, cost_critic)`` with ``hidden_layers``, ``activation``,
    ``init_log_std`` and (optional, default ``"normal"``) ``distribution`` from the config, on
    ``device``.

    Examples:
        >>> env = make_env("MockCMDP-v0", num_envs=2, seed=0)
        >>> cfg = {"hidden_layers": [8], "activation": "tanh", "init_log_std": -0.5}
        >>> actor, critic, cost_critic = make_agent(cfg, env, torch.device("cpu"))
        >>> actor(env.reset())["action"].shape
        torch.Size([2, 1])
    """
    return actor_critic_from_env(
        env,
        hidden_layers=[int(h) for h in cfg["hidden_layers"]],
        activation=str(cfg["activation"]),
        init_log_std=float(cfg["init_log_std"]),
        distribution=str(cfg.get("distribution", "normal")),
        device=device,
    )


def make_estimators(
    cfg: Mapping[str, Any],
    critic: torch.nn.Module,
    cost_critic: torch.nn.Module,
    device: torch.device,
) -> tuple[GAE, GAE]:
    """Reward and cost GAE with ``gamma``/``gae_lambda`` and ``cost_gamma``/``cost_gae_lambda``.

    Examples:
        >>> env = make_env("MockCMDP-v0", num_envs=2, seed=0)
        >>> cfg = {"hidden_layers": [8], "activation": "tanh", "init_log_std": -0.5, "gamma": 0.99,
        ...        "gae_lambda": 0.95, "cost_gamma": 0.9, "cost_gae_lambda": 0.8}
        >>> _, critic, cost_critic = make_agent(cfg, env, torch.device("cpu"))
        >>> gae, cost_gae = make_estimators(cfg, critic, cost_critic, torch.device("cpu"))
        >>> round(float(cost_gae.gamma), 3), round(float(cost_gae.lmbda), 3), cost_gae.tensor_keys.advantage
        (0.9, 0.8, 'cost_advantage')
    """
    return make_value_estimators(
        critic,
        cost_critic,
        gamma=float(cfg["gamma"]),
        lmbda=float(cfg["gae_lambda"]),
        cost_gamma=float(cfg["cost_gamma"]),
        cost_lmbda=float(cfg["cost_gae_lambda"]),
        device=device,
    )


def make_run_collector(
    run: TrainingRun, env: EnvBase, policy: torch.nn.Module, device: torch.device
) -> Collector | WorkerCollector:
    """The collector of ``run``: one ``steps_per_epoch`` batch for each epoch the run has left.

    :func:`~cmo_rl.training.collection.make_collector` with the run's ``steps_per_epoch`` and
    ``seed`` (envs re-seeded each epoch, so a resumed run collects what the uninterrupted one
    would), its epochs ``run.epoch .. run.num_epochs - 1``, and the worker processes or Ray
    actors of the config's ``collector:`` block (:func:`~cmo_rl.training.parallel.worker_spec`).

    Args:
        run: the :class:`~cmo_rl.training.run.TrainingRun` (read: ``cfg``, ``num_epochs``,
            ``epoch``).
        env: the training env (:func:`make_envs`).
        policy: the actor, run on ``device``.
        device: policy and batch device.

    Examples:
        >>> from types import SimpleNamespace
        >>> from cmo_rl.modules import make_actor
        >>> cfg = {"env_id": "MockCMDP-v0", "episode_length": 4, "steps_per_epoch": 8, "seed": 0,
        ...        "collector": None}
        >>> run = SimpleNamespace(cfg=cfg, num_epochs=3, epoch=1)  # resumed after epoch 1 of 3
        >>> env = make_env("MockCMDP-v0", num_envs=2, seed=0, max_episode_steps=4)
        >>> collector = make_run_collector(run, env, make_actor(env, hidden_layers=(4,)), "cpu")
        >>> [tuple(batch.shape) for batch in collector]
        [(2, 4), (2, 4)]
    """
    cfg = run.cfg
    return make_collector(
        env,
        policy,
        steps_per_epoch=int(cfg["steps_per_epoch"]),
        num_epochs=run.num_epochs,
        seed=int(cfg["seed"]),
        first_epoch=run.epoch,
        device=device,
        workers=worker_spec(cfg),  # collector.backend=multi_sync|ray: worker processes
    )
