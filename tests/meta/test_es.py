"""Evolution strategies: ranks, the antithetic estimate, the Adam ascent and a run's fitness."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from cmo_rl.meta.es import (
    EvolutionStrategy,
    antithetic_noise,
    centered_ranks,
    es_gradient,
    pair_scores,
    run_fitness,
)


def test_centered_ranks_and_group_scores_by_hand():
    assert centered_ranks(torch.tensor([3.0, 1.0, 2.0, 0.0])).tolist() == pytest.approx(
        [0.5, -1 / 6, 1 / 6, -0.5]
    )
    # two groups with opposite orders cancel; a member's score is the mean of its ranks
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert pair_scores(f).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match=r"\[2n, groups\]"):
        pair_scores(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="fitness must be finite"):
        pair_scores(torch.tensor([[1.0], [float("nan")]]))


def test_the_estimate_points_up_a_linear_objective():
    """For F(x) = w.x with ranks, E[g] is along w: with 400 pairs the cosine is > 0.9."""
    w = torch.tensor([3.0, -1.0, 0.5, 0.0])
    noise = antithetic_noise(4, 400, seed=1)
    members = torch.cat([noise, -noise]) * 0.1
    g = es_gradient(noise, pair_scores((members @ w).unsqueeze(1)), sigma=0.1)
    assert torch.nn.functional.cosine_similarity(g, w, dim=0) > 0.9
    # by hand: one pair, + wins: (0.5 - (-0.5)) * eps / (2 * 1 * sigma)
    eps = torch.tensor([[2.0, -4.0]])
    assert es_gradient(eps, torch.tensor([0.5, -0.5]), sigma=0.25).tolist() == [4.0, -8.0]


def test_the_first_step_is_adams_lr_along_the_sign_and_the_state_resumes():
    es = EvolutionStrategy(sigma=0.1, lr=0.01, pairs=3, seed=5)
    state = es.init_state(torch.zeros(4))
    members, noise = es.ask(state)
    assert members.shape == (6, 4)
    assert torch.allclose(members[:3], -members[3:])  # antithetic around 0
    fitness = (members @ torch.tensor([1.0, -1.0, 2.0, 0.5])).unsqueeze(1)
    new = es.tell(state, noise, fitness)
    g = es_gradient(noise, pair_scores(fitness), 0.1)
    # Adam's first step: lr * m_hat / (sqrt(v_hat) + eps) = lr * sign(g)
    assert torch.allclose(new["center"], 0.01 * g.sign(), atol=1e-7)
    assert int(new["generation"]) == 1
    # the noise of a generation depends on (seed, generation) only: a restored state asks the
    # same members
    restored = es.init_state(torch.zeros(4)).update_(new.to_dict())
    assert torch.equal(es.ask(restored)[0], es.ask(new)[0])
    assert not torch.equal(es.ask(restored)[0], members)


def test_bad_settings_are_named():
    with pytest.raises(ValueError) as err:
        EvolutionStrategy(sigma=0.0, lr=-1.0, pairs=0)
    assert all(k in str(err.value) for k in ("sigma", "lr", "pairs"))


def test_run_fitness_by_hand():
    df = pd.DataFrame({
        "step": [1, 2, 3, 4, 5, 6, 7, 8],
        "train/episode_return": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0],
        "train/episode_cost": [50.0, 30.0, 25.0, 20.0, 10.0, 10.0, 30.0, 40.0],
        "eval/episode_return": [None] * 7 + [25.0],  # not used: the run's own episodes
    })  # fmt: skip
    out = run_fitness(df, cost_limit=25.0, mu=2.0, nu=4.0)
    # last quarter (2 epochs): return 15, cost 35; violations 25 + 5 + 5 + 15 over 8 epochs
    assert out == {"fitness": 15 - 2 * 10 - 4 * 50 / 8, "final_return": 15.0,
                   "final_cost": 35.0, "mean_violation": 6.25}  # fmt: skip
