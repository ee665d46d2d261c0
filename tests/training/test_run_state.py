"""Checkpoint state of a run: snapshot -> file -> restore gives back exactly the same run state."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from cmo_rl.config import ConfigError
from cmo_rl.envs.factory import make_env, observation_norm_of
from cmo_rl.lifecycle import resolve_resume_config
from cmo_rl.lifecycle.checkpoint import (
    capture_rng_state,
    cpu_state_copy,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from cmo_rl.modules import actor_critic_from_env
from cmo_rl.objectives import LagrangeMultiplier, PIDLagrangian
from cmo_rl.training.onpolicy import make_optimizer
from cmo_rl.training.run_state import RESUMABLE_KEYS, recipe_state, restore_snapshot


def take_snapshot(*, step, epoch, time_total, modules, optimizers, obs_norm, config):
    """What :meth:`cmo_rl.lifecycle.Run.snapshot` stores for a recipe."""
    entries = recipe_state(epoch=epoch, modules=modules, optimizers=optimizers, obs_norm=obs_norm)
    common = {"step": step, "time_total": time_total, "rng": capture_rng_state(), "config": config}
    return cpu_state_copy({**common, **entries})


def _objects(seed: int):
    torch.manual_seed(seed)
    env = make_env("MockCMDP-v0", num_envs=4, seed=0, normalize_observations=True)
    actor, critic, cost_critic = actor_critic_from_env(env, hidden_layers=(8,))
    lam = LagrangeMultiplier(cost_limit=2.0, init_lambda=0.5, lr=0.1)
    pid = PIDLagrangian(cost_limit=2.0, kp=0.5, ki=0.1, kd=0.2, d_delay=3)
    optimizer = make_optimizer({"actor": actor, "critic": critic, "cost_critic": cost_critic}, 1e-2)
    modules = {"policy": actor, "value": critic, "cost_value": cost_critic, "lam": lam, "pid": pid}
    return env, modules, {"optimizer": optimizer}


def _advance(env, modules, optimizers) -> None:
    """One 'epoch': a rollout (moves the obs statistics), an Adam step, both multipliers."""
    with torch.no_grad():
        td = env.rollout(5, modules["policy"])
    loss = modules["value"](td)["state_value"].pow(2).mean() - td["observation"].mean() * 0
    loss = loss + modules["policy"].get_dist(td.clone(False)).log_prob(td["action"]).mean()
    optimizers["optimizer"].zero_grad()
    loss.backward()
    optimizers["optimizer"].step()
    cost = td["next", "cost"].sum() / 4
    modules["lam"].update(cost)
    modules["pid"].update(cost * 3)


def _fingerprint(env, modules) -> list[torch.Tensor]:
    params = [p.detach().clone() for m in modules.values() for p in m.parameters()]
    params += [b.detach().clone() for b in modules["pid"].buffers()]
    norm = observation_norm_of(env)
    return [*params, norm.loc["observation"].clone(), norm.scale["observation"].clone()]


def test_snapshot_file_restore_round_trip_continues_identically(tmp_path):
    env, modules, optimizers = _objects(seed=0)
    for _ in range(3):  # Adam moments, lambda's Adam state, PID history, obs statistics
        _advance(env, modules, optimizers)
    snap = take_snapshot(
        step=60,
        epoch=3,
        time_total=1.5,
        modules=modules,
        optimizers=optimizers,
        obs_norm=observation_norm_of(env),
        config={"seed": 0},
    )
    expected_draws = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    random.seed(1)
    np.random.seed(1)  # noqa: NPY002
    torch.manual_seed(1)
    path = save_checkpoint(tmp_path / "c.pt", snap)
    state = load_checkpoint(path)  # weights_only=True: the snapshot holds plain data only
    assert (state["step"], state["epoch"], state["time_total"]) == (60, 3, 1.5)

    # a fresh copy (other initial weights, other env history) restored from the file ...
    env2, modules2, optimizers2 = _objects(seed=1)
    env2.rollout(7)  # moves its obs statistics and its env RNG: both must not matter
    restore_snapshot(
        state, modules=modules2, optimizers=optimizers2, obs_norm=observation_norm_of(env2)
    )
    py, np_draw, torch_draw = random.random(), np.random.rand(), torch.rand(3)  # noqa: NPY002
    assert (py, np_draw) == expected_draws[:2] and torch.equal(torch_draw, expected_draws[2])

    # ... continues exactly like the original (envs are re-seeded at each epoch's start)
    results = []
    for e, m, o in ((env, modules, optimizers), (env2, modules2, optimizers2)):
        restore_rng_state(snap["rng"])
        e.set_seed(123)
        _advance(e, m, o)
        results.append(_fingerprint(e, m))
    assert len(results[0]) == len(results[1]) > 10
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_snapshot_is_a_detached_copy():
    env, modules, optimizers = _objects(seed=0)
    snap = take_snapshot(
        step=0,
        epoch=0,
        time_total=0.0,
        modules=modules,
        optimizers=optimizers,
        obs_norm=observation_norm_of(env),
        config={},
    )
    weight = snap["policy"][next(iter(snap["policy"]))].clone()
    _advance(env, modules, optimizers)
    assert torch.equal(snap["policy"][next(iter(snap["policy"]))], weight)
    assert all(not t.requires_grad for t in snap["policy"].values())


def test_restore_errors_name_the_problem():
    env, modules, optimizers = _objects(seed=0)
    snap = take_snapshot(
        step=0,
        epoch=0,
        time_total=0.0,
        modules=modules,
        optimizers=optimizers,
        obs_norm=observation_norm_of(env),
        config={},
    )
    with pytest.raises(ValueError, match=r"lacks \['extra'\]"):
        restore_snapshot(
            snap,
            modules={**modules, "extra": torch.nn.Linear(1, 1)},
            optimizers=optimizers,
            obs_norm=observation_norm_of(env),
        )
    with pytest.raises(ValueError, match="checkpoint entry 'value' does not fit"):
        restore_snapshot(
            snap,
            modules={"value": torch.nn.Linear(3, 3)},
            optimizers={},
            obs_norm=observation_norm_of(env),
        )
    with pytest.raises(ValueError, match="observation normalisation differs"):
        restore_snapshot(snap, modules={}, optimizers={}, obs_norm=None)
    with pytest.raises(ValueError, match="clash"):
        take_snapshot(
            step=0,
            epoch=0,
            time_total=0.0,
            modules={"rng": torch.nn.Linear(1, 1)},
            optimizers={},
            obs_norm=None,
            config={},
        )


def test_resume_config_keeps_the_stored_run_and_allows_only_resumable_changes():
    stored = {"seed": 1, "lr": 0.1, "total_steps": 100, "device": "cpu", "resume": None}
    # Hydra: only explicitly given keys count; the yaml default lr=0.5 does not override
    requested = {"seed": 0, "lr": 0.5, "total_steps": 300, "device": "cpu", "resume": "runs/x"}
    merged = resolve_resume_config(
        requested, stored, explicit={"total_steps", "resume"}, resumable=RESUMABLE_KEYS
    )
    assert merged == {"seed": 1, "lr": 0.1, "total_steps": 300, "device": "cpu", "resume": "runs/x"}
    # explicitly changing a trajectory-defining key is refused, with every offender listed
    with pytest.raises(ConfigError) as info:
        resolve_resume_config(
            requested, stored, explicit={"seed", "lr", "resume"}, resumable=RESUMABLE_KEYS
        )
    assert [p.split(":")[0] for p in info.value.problems] == ["lr", "seed"]
    # outside Hydra every key is explicit
    same = dict(stored, total_steps=500, resume="r")
    assert resolve_resume_config(same, stored, resumable=RESUMABLE_KEYS)["total_steps"] == 500
    with pytest.raises(ConfigError, match="not in the resumed run's config"):
        resolve_resume_config({**same, "clip_epsilon": 0.2}, stored, resumable=RESUMABLE_KEYS)
    assert {"total_steps", "device", "resume"} <= RESUMABLE_KEYS
    assert not {"seed", "lr", "steps_per_epoch", "num_envs", "cost_limit"} & RESUMABLE_KEYS


def test_resume_config_with_cmo_keys_takes_new_keys_and_copies_values():
    """``cmo``'s use: its own resumable list, and keys newer than the run take their defaults."""
    from cmo_rl.meta_schema import RESUMABLE_KEYS as CMO_RESUMABLE

    stored = {"seed": 1, "total_meta_iters": 10, "meta_lr": 0.1, "env_ids": ["A"], "resume": None}
    requested = {**stored, "total_meta_iters": 20, "meta_lr": 0.5, "resume": "r", "added": [1]}
    explicit = {"total_meta_iters", "resume", "not_in_requested"}
    merged = resolve_resume_config(
        requested, stored, explicit, resumable=CMO_RESUMABLE, allow_new_keys=True
    )
    assert merged == {
        "seed": 1,
        "total_meta_iters": 20,
        "meta_lr": 0.1,  # not explicit: the run's value, not the yaml default
        "env_ids": ["A"],
        "resume": "r",
        "added": [1],  # newer than the run: its requested (default) value
    }
    assert list(merged)[-1] == "added"
    assert merged["env_ids"] is not stored["env_ids"] and merged["added"] is not requested["added"]
    # the recipes' list does not apply: total_meta_iters is not a recipe key
    with pytest.raises(ConfigError, match=r"total_meta_iters: got 20 .* \['checkpoint_interval'"):
        resolve_resume_config(
            requested, stored, explicit, resumable=RESUMABLE_KEYS, allow_new_keys=True
        )
    # without allow_new_keys a key the run lacks is refused even when implicit (another recipe)
    with pytest.raises(ConfigError) as info:
        resolve_resume_config(requested, stored, explicit, resumable=CMO_RESUMABLE)
    assert info.value.problems == [
        "added: not in the resumed run's config (a run of another recipe or program?)"
    ]
    # an explicit non-resumable change is refused whatever allow_new_keys says
    with pytest.raises(ConfigError, match="meta_lr: got 0.5 but the resumed run has 0.1; only"):
        resolve_resume_config(
            requested, stored, {"meta_lr"}, resumable=CMO_RESUMABLE, allow_new_keys=True
        )
