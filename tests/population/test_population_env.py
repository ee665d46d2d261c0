"""The learners' envs as one batched env: each learner's slice equals its own env, bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs import RewardScaling, TransformedEnv

from cmo_rl.envs import observation_norm
from cmo_rl.envs.factory import make_env
from cmo_rl.envs.safety import SafetyGymnasiumBatchEnv
from cmo_rl.population import LearnerNets, LearnerRNG, make_population, stack_learners
from cmo_rl.population.collection import PopulationCollector
from cmo_rl.population.env import (
    PopulationEnv,
    PopulationObservationNorm,
    batching_refusal,
    population_env,
)
from cmo_rl.testing import MockCMDPEnv

SEEDS = (3, 11, 5)


def learner_envs(env_id: str, num_envs: int, **kw) -> list[TransformedEnv]:
    envs = [make_env(env_id, num_envs, seed=s, normalize_observations=True, **kw) for s in SEEDS]
    for env in envs:
        env.reset()
    return envs


def step_both(env_id: str, num_envs: int, steps: int, **kw) -> int:
    """Step ``P`` single envs and the batched env built from ``P`` more, with the same
    actions; every key of every step and every normaliser must agree exactly. Returns the
    number of episode ends seen."""
    singles = learner_envs(env_id, num_envs, **kw)
    batched = population_env(learner_envs(env_id, num_envs, **kw))
    norms = [env.transform[-1] for env in singles]
    own_norms = batched.transform[-1].norms
    gen = torch.Generator().manual_seed(0)
    for env, seed in zip(singles, SEEDS):  # a seeded full reset, as at an epoch start
        env.set_seed(seed + 100, static_seed=True)
    carriers = [env.reset() for env in singles]
    batched.base_env.set_seeds([seed + 100 for seed in SEEDS])
    carrier = batched.reset()
    assert torch.equal(carrier["observation"], torch.stack([c["observation"] for c in carriers]))
    ends = 0
    spec = singles[0].action_spec
    for _ in range(steps):
        low, high = spec.space.low, spec.space.high
        action = low + (high - low) * torch.rand((len(SEEDS), *spec.shape), generator=gen)
        outs = []
        for p, env in enumerate(singles):
            carriers[p]["action"] = action[p]
            out, carriers[p] = env.step_and_maybe_reset(carriers[p])
            outs.append(out)
        carrier["action"] = action
        out, carrier = batched.step_and_maybe_reset(carrier)
        expected, following = torch.stack(outs), torch.stack(carriers)
        for key in expected.keys(True, True):
            assert torch.equal(out[key], expected[key]), key
        for key in following.keys(True, True):  # "action" is the policy's to overwrite
            assert key == "action" or torch.equal(carrier[key], following[key]), key
        ends += int(out["next", "done"].sum())
    for single, own in zip(norms, own_norms):
        for name in ("_loc", "_var", "_count"):
            assert torch.equal(
                getattr(own, name)["observation"], getattr(single, name)["observation"]
            )
    return ends


def test_mock_learners_step_as_their_own_envs():
    assert step_both("MockCMDP-v0", 2, 30, max_episode_steps=7) == 3 * 2 * 4


def test_safety_learners_with_asynchronous_episode_ends_step_as_their_own_envs():
    # a falling hopper terminates: sub-envs end at different steps, so partial resets of one
    # learner must leave the other learners' normalisers untouched
    ends = step_both("SafetyHopperVelocity-v1", 2, 150)
    assert ends >= 6


def test_the_norm_moments_are_each_learners_own_rows():
    norms = [observation_norm(["observation"]) for _ in range(2)]
    for norm, rows in zip(norms, ([[0.0, 2.0], [2.0, 2.0]], [[10.0, -1.0], [30.0, 1.0]])):
        td = TensorDict({"observation": torch.tensor(rows)}, batch_size=[2])
        norm._step(td, td.clone())  # initialises and counts 2 rows
    population = PopulationObservationNorm(norms)
    x = torch.tensor([[[4.0, 2.0], [4.0, 2.0]], [[20.0, 0.0], [20.0, 0.0]]])
    out = population._step(TensorDict(), TensorDict({"observation": x}, batch_size=[2, 2]))
    # learner 0 saw x0 in {0, 2, 4, 4}: mean 2.5, E[x^2] = 9, var 2.75; feature 1 constant 2
    # learner 1 saw x0 in {10, 30, 20, 20}: mean 20, var 50; x1 in {-1, 1, 0, 0}: var 0.5
    assert norms[0].loc["observation"].tolist() == pytest.approx([2.5, 2.0])
    assert norms[1].loc["observation"].tolist() == pytest.approx([20.0, 0.0])
    assert [int(n._count["observation"]) for n in norms] == [4, 4]
    assert out["observation"][0, 0].tolist() == pytest.approx([1.5 / 2.75**0.5, 0.0], abs=1e-6)
    assert out["observation"][1, 0].tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    # a partial reset of learner 1 only: learner 0's moments do not move
    mask = torch.tensor([[[False], [False]], [[True], [False]]])
    population._reset(
        TensorDict({"_reset": mask}, batch_size=[2, 2]),
        TensorDict({"observation": x}, batch_size=[2, 2]),
    )
    assert [int(n._count["observation"]) for n in norms] == [4, 6]
    assert norms[0].loc["observation"].tolist() == pytest.approx([2.5, 2.0])


def test_learner_norms_loaded_between_epochs_are_picked_up_at_the_next_full_reset():
    envs = learner_envs("MockCMDP-v0", 2, max_episode_steps=5)
    batched = population_env(envs)
    batched.rollout(3)
    norm = envs[1].transform[-1]
    state = copy.deepcopy(norm.state_dict())
    count = int(norm._count["observation"])
    batched.rollout(3)  # rollout resets: a full reset, then 3 steps
    assert int(norm._count["observation"]) == count + 4 * 2
    norm.load_state_dict(state)  # e.g. a checkpoint restored
    batched.reset()
    assert int(norm._count["observation"]) == count + 2


def test_refusals_name_the_reason():
    plain = [make_env("MockCMDP-v0", 2, seed=s) for s in (0, 1)]
    assert batching_refusal(plain) is None
    scaled = [TransformedEnv(MockCMDPEnv(2, seed=s), RewardScaling(0.0, 2.0)) for s in (0, 1)]
    assert "not all batchable" in batching_refusal(scaled)
    mixed = [
        make_env("MockCMDP-v0", 2, seed=0),
        make_env("MockCMDP-v0", 2, normalize_observations=True),
    ]
    assert "different transform chains" in batching_refusal(mixed)
    with pytest.raises(ValueError, match="cannot be batched: .*not all batchable"):
        population_env(scaled)
    with pytest.raises(ValueError, match="same specs"):
        PopulationEnv([MockCMDPEnv(2), MockCMDPEnv(3)])


def test_safety_bases_step_as_one_flat_env_with_per_learner_seeds():
    bases = [SafetyGymnasiumBatchEnv("SafetyHalfCheetahVelocity-v1", 2) for _ in SEEDS]
    env = PopulationEnv(bases)
    assert env.flat is not None and env.flat.num_envs == 6
    env.set_seeds(list(SEEDS))
    batched = env.reset()["observation"]
    alone = SafetyGymnasiumBatchEnv("SafetyHalfCheetahVelocity-v1", 2, seed=SEEDS[1])
    assert torch.equal(batched[1], alone.reset()["observation"])
    with pytest.raises(ValueError, match="one task, horizon"):
        SafetyGymnasiumBatchEnv.concatenate(
            [
                bases[0],
                SafetyGymnasiumBatchEnv("SafetyHalfCheetahVelocity-v1", 2, max_episode_steps=9),
            ]
        )
    with pytest.raises(ValueError, match="3 seeds for 2 sub-envs"):
        bases[0].seed_sub_envs([1, 2, 3])


@pytest.mark.parametrize("env_id", ["MockCMDP-v0", "SafetyHopperVelocity-v1"])
def test_the_batched_collector_equals_learner_after_learner_collection(env_id):
    def collect(batched: bool):
        envs = [make_env(env_id, 2, seed=s, normalize_observations=True) for s in SEEDS]
        cfg = {"hidden_layers": [16], "activation": "tanh", "init_log_std": 0.5}
        agents = make_population(cfg, envs[0], "cpu", len(SEEDS), seeds=list(SEEDS))
        collector = PopulationCollector(
            envs, agents, LearnerNets.from_agent(agents[0]), LearnerRNG(SEEDS), seeds=SEEDS,
            steps_per_epoch=120,
        )  # fmt: skip
        assert collector.batching_refusal is None
        if not batched:
            collector.batching_refusal = "forced for the test"
        params = stack_learners(agents)
        return [collector.collect(params, epoch) for epoch in range(2)]

    for ours, theirs in zip(collect(True), collect(False)):
        assert set(ours.keys(True, True)) == set(theirs.keys(True, True))
        for key in theirs.keys(True, True):
            assert torch.equal(ours[key], theirs[key]), key
