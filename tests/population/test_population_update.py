"""One population update equals ``P`` separate runs of the recipe's single-learner update.

The reference is step 3 of :func:`cmo_rl.training.lagrangian_ppo.train_lagrangian_ppo`:
``minibatch_epochs`` + ``LagrangianPPOLoss`` + ``make_optimizer``'s Adam, learner by learner,
each with its own generator (the same seed as the population learner's). On CPU with one
thread the arithmetic is the same op for op (vmap's batched matmuls and reductions give the
same float32 results as the per-learner ones at these sizes), so the comparison is exact:
parameters, Adam state and every metric, bit for bit.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_agents, make_batches, run_single

from cmo_rl.lifecycle.guard import NonFiniteError
from cmo_rl.population import LearnerNets, LossCoefficients, PopulationPPO, stack_learners

KW = {
    "update_iters": 4,
    "minibatch_size": 32,
    "max_grad_norm": 0.5,  # small: the clip is active in some steps
    "clip_epsilon": 0.2,
    "entropy_coeff": 0.01,
}
N = 200  # not a multiple of 32: every pass ends with a minibatch of 8
LAMS = [0.0, 0.5, 2.0]
LRS = [3e-4, 1e-3, 2e-4]  # per-learner actor learning rate (linear_lr at different epochs)
SEEDS = [11, 12, 13]


def _engine(**overrides) -> tuple[PopulationPPO, list]:
    agents = make_agents(3)
    options = {k: KW[k] for k in ("update_iters", "minibatch_size", "max_grad_norm")}
    options.update({"all_diagnostics": True, "vectorize": False, **overrides})
    coeffs = LossCoefficients.make(
        clip_epsilon=KW["clip_epsilon"], entropy_coeff=KW["entropy_coeff"]
    )
    return PopulationPPO(LearnerNets.from_agent(agents[0]), coeffs, **options), agents


def _population(engine, agents, batch, target_kl=None):
    params = stack_learners(agents)
    adam = engine.make_optimizer(params, 3e-4)
    adam.set_lr(LRS, group="actor")
    generators = [torch.Generator().manual_seed(s) for s in SEEDS]
    new, results = engine.update(
        params, adam, batch, torch.tensor(LAMS), target_kl=target_kl, generators=generators
    )
    return new, adam, results


def _assert_learner_equals_reference(p, agents, batch, new, adam, results, target_kl):
    ref_agent, ref_opt, ref_result = run_single(
        agents[p], batch[p], lam=LAMS[p], lr=LRS[p], seed=SEEDS[p], target_kl=target_kl, **KW
    )
    expected = stack_learners([ref_agent])[0]
    for key, value in expected.items(True, True):
        assert torch.equal(new[p][key], value), (p, key, (new[p][key] - value).abs().max())
    ours = adam.state_dict_of(p, ref_opt)
    theirs = ref_opt.state_dict()
    assert [g["lr"] for g in ours["param_groups"]] == [g["lr"] for g in theirs["param_groups"]]
    assert ours["state"].keys() == theirs["state"].keys()
    for index, entry in theirs["state"].items():
        for name, tensor in entry.items():
            assert torch.equal(ours["state"][index][name], tensor), (p, index, name)
    assert results[p] == ref_result
    return ref_result


def test_population_update_equals_separate_single_learner_runs():
    engine, agents = _engine()
    batch = make_batches(agents, N)
    new, adam, results = _population(engine, agents, batch)
    for p in range(3):
        ref = _assert_learner_equals_reference(p, agents, batch, new, adam, results, None)
        assert ref["update_passes"] == KW["update_iters"]
        assert ref["loss_objective"] != 0.0 and ref["kl"] > 0.0
    assert adam.step.tolist() == [4.0 * math.ceil(N / 32)] * 3
    # the learners really differ (own lambda, lr, data and shuffle)
    assert len({results[p]["loss_objective"] for p in range(3)}) == 3


@pytest.mark.parametrize("compact", [True, False])
def test_kl_early_stop_masks_a_learner_exactly_as_if_it_ran_alone(compact):
    engine, agents = _engine(compact=compact)
    batch = make_batches(agents, N)
    targets = _targets(agents, batch)
    new, adam, results = _population(engine, agents, batch, target_kl=torch.tensor(targets))
    passes = []
    for p in range(3):
        ref = _assert_learner_equals_reference(p, agents, batch, new, adam, results, targets[p])
        passes.append(ref["update_passes"])
    assert passes[0] == 1 and passes[1] == KW["update_iters"]
    assert 1 < passes[2] < KW["update_iters"], passes  # stopped in between: masked passes
    steps = math.ceil(N / 32)
    assert adam.step.tolist() == [float(steps * k) for k in passes]


def _targets(agents, batch) -> list[float]:
    """KL budgets: learner 0 stops after pass 1, learner 1 never, learner 2 after pass 2 (its
    budget lies between its KL after one pass and after two, measured alone)."""
    kls = []
    for passes in (1, 2):
        _, _, result = run_single(
            agents[2], batch[2], lam=LAMS[2], lr=LRS[2], seed=SEEDS[2], target_kl=None,
            **dict(KW, update_iters=passes),
        )  # fmt: skip
        kls.append(result["kl"])
    assert kls[1] > kls[0]
    return [0.0, float("inf"), math.sqrt(kls[0] * kls[1])]


@pytest.mark.parametrize("target", [False, True])
def test_vmapped_update_equals_separate_runs_to_float32_rounding(target):
    """``vectorize=True`` (the fast path): the critics' one-column last layer runs as a batched
    matmul instead of BLAS's matrix-vector product, which sums in another order: results agree
    to float32 rounding. Measured here: parameters within 6e-8 (about one ulp), metrics within
    3e-5 relative (``kl_approx``, a mean of terms that cancel) and 4e-7 otherwise."""
    engine, agents = _engine(vectorize=True)
    batch = make_batches(agents, N)
    targets = _targets(agents, batch) if target else [None] * 3
    new, adam, results = _population(
        engine, agents, batch, torch.tensor(targets) if target else None
    )
    for p in range(3):
        ref_agent, ref_opt, ref = run_single(
            agents[p], batch[p], lam=LAMS[p], lr=LRS[p], seed=SEEDS[p], target_kl=targets[p], **KW
        )
        expected = stack_learners([ref_agent])[0]
        for key, value in expected.items(True, True):
            torch.testing.assert_close(new[p][key], value, rtol=1e-5, atol=1e-6)
        ours = adam.state_dict_of(p, ref_opt)["state"]
        for index, entry in ref_opt.state_dict()["state"].items():
            for name, tensor in entry.items():
                torch.testing.assert_close(ours[index][name], tensor, rtol=1e-4, atol=1e-9)
        assert results[p].keys() == ref.keys()
        assert results[p]["update_passes"] == ref["update_passes"]
        for key, value in ref.items():
            assert results[p][key] == pytest.approx(value, rel=1e-4, abs=1e-7), (p, key)
    if target:
        assert [r["update_passes"] for r in results] == [1, KW["update_iters"], 2]


def test_a_non_finite_learner_skips_its_steps_and_leaves_the_others_alone():
    engine, agents = _engine()
    batch = make_batches(agents, N).clone()
    batch["advantage"][1, 5] = float("nan")  # learner 1: the minibatch holding sample 5
    new, adam, results = _population(engine, agents, batch)
    for p in range(3):
        ref = _assert_learner_equals_reference(p, agents, batch, new, adam, results, None)
        assert ref["skipped_updates"] == (KW["update_iters"] if p == 1 else 0)
    raising, agents = _engine(nan_policy="raise")
    with pytest.raises(NonFiniteError, match=r"learners \[1\]"):
        _population(raising, agents, batch)


def test_plain_ppo_and_a_shared_batch():
    """lambda = 0 is PPO; one batch shared by all learners is ``batch.expand(P, N)``."""
    engine, agents = _engine()
    shared = make_batches(agents[:1], N)[0]
    batch = shared.expand(3, N)
    params = stack_learners(agents)
    adam = engine.make_optimizer(params, 3e-4)
    generators = [torch.Generator().manual_seed(11) for _ in range(3)]
    new, results = engine.update(params, adam, batch, torch.zeros(3), generators=generators)
    ref_agent, _, ref = run_single(
        agents[0], shared, lam=0.0, lr=3e-4, seed=11, target_kl=None, **KW
    )
    expected = stack_learners([ref_agent])[0]
    assert (new[0] == expected).all()
    assert results[0] == ref
    assert not (new[1] == expected).all()  # other initialisations, other results
