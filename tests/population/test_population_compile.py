"""``torch.compile`` of the population step: same results as eager to float32 rounding."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import make_agents, make_batches

from cmo_rl.population import LearnerNets, LossCoefficients, PopulationPPO, stack_learners


@pytest.mark.slow
def test_compiled_step_matches_eager():
    """Inductor fuses the Adam and loss elementwise ops (its own exp/tanh code, reductions in
    its own order), so results match eager to float32 rounding, not bit for bit."""
    agents = make_agents(2)
    batch = make_batches(agents, 96)
    results = {}
    for compile in (False, True):
        engine = PopulationPPO(
            LearnerNets.from_agent(agents[0]), LossCoefficients.make(clip_epsilon=0.2, entropy_coeff=0.01), update_iters=2,
            minibatch_size=32, max_grad_norm=0.5, compile=compile, compact=False,
        )  # fmt: skip
        params = stack_learners(agents)
        adam = engine.make_optimizer(params, 3e-4)
        generators = [torch.Generator().manual_seed(s) for s in (1, 2)]
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # no silent eager fallback
            new, metrics = engine.update(
                params, adam, batch, torch.tensor([0.0, 1.0]), target_kl=0.5, generators=generators
            )
        results[compile] = (new, metrics, adam.step.clone())
    (eager, eager_metrics, eager_steps), (compiled, metrics, steps) = results[False], results[True]
    assert torch.equal(eager_steps, steps)
    for key in eager.keys(True, True):
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-5, atol=1e-6)
    for ours, theirs in zip(metrics, eager_metrics):
        assert ours.keys() == theirs.keys()
        for key, value in theirs.items():
            assert ours[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_a_failing_compile_falls_back_to_eager(monkeypatch):
    agents = make_agents(2)
    batch = make_batches(agents, 40)
    engine = PopulationPPO(
        LearnerNets.from_agent(agents[0]), LossCoefficients.make(), update_iters=1,
        minibatch_size=20, compile=True,
    )  # fmt: skip

    def broken(*args):
        raise RuntimeError("inductor says no")

    engine._step_fn.fn = broken
    params = stack_learners(agents)
    with pytest.warns(UserWarning, match="running eagerly"):
        new, _ = engine.update(params, engine.make_optimizer(params, 1e-3), batch, torch.zeros(2))
    assert not (new == params).all()
