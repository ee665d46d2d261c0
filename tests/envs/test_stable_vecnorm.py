"""StableVecNorm: VecNormV2's statistics, minus the NaN of a negative float32 variance."""

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.transforms.vecnorm import VecNormV2

from cmo_rl.envs import StableVecNorm, make_safety_env
from cmo_rl.seeding import seed_everything
from cmo_rl.training.collection import make_collector
from cmo_rl.training.setup import make_agent


def _norm(cls: type) -> VecNormV2:
    return cls(in_keys=["observation"], decay=1.0, eps=1e-4, reduce_batch_dims=True)


def _feed(norm: VecNormV2, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    outs = []
    for x in batches:
        td = TensorDict({"observation": x}, batch_size=x.shape[:1])
        outs.append(norm._step(td, td.clone())["observation"])
    return outs


def test_near_constant_feature_is_finite_where_stock_vecnorm_gives_nan():
    # 1.0, 1.0 then 0.99999994: E[x^2] - E[x]^2 cancels to < 0 in float32
    batches = [torch.tensor([[1.0], [1.0]]), torch.tensor([[0.99999994], [0.99999994]])]
    stock = _feed(_norm(VecNormV2), batches)
    assert torch.isnan(stock[-1]).all()  # the bug being fixed
    stable = _feed(_norm(StableVecNorm), batches)
    assert all(torch.isfinite(o).all() for o in stable)
    assert stable[-1].abs().max() < 1e-3  # (x - mean) / eps with |x - mean| ~ 6e-8


def test_statistics_match_vecnorm_on_ordinary_data():
    torch.manual_seed(0)
    batches = [torch.randn(8, 5) * 3 + 2 for _ in range(20)]
    stock, stable = _norm(VecNormV2), _norm(StableVecNorm)
    for a, b in zip(_feed(stock, batches), _feed(stable, batches)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(stable.loc["observation"], batches_mean(batches))
    assert stable.state_dict().keys() == stock.state_dict().keys()  # checkpoints interchange


def batches_mean(batches: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(batches).mean(0)


def test_doggo_first_batch_is_finite_with_normalised_observations():
    """The real case: SafetyDoggoButton1's first normalised batch used to hold NaN observations,
    NaN actions ("The simulation is unstable") and skip every update."""
    seed_everything(0)
    env = make_safety_env(
        "SafetyDoggoButton1-v0",
        num_envs=2,
        seed=0,
        max_episode_steps=250,
        normalize_observations=True,
    )
    cfg = {"hidden_layers": [64, 64], "activation": "tanh", "init_log_std": -0.5}
    actor = make_agent(cfg, env, torch.device("cpu"))[0]
    collector = make_collector(
        env,
        actor,
        steps_per_epoch=500,
        num_epochs=1,
        seed=0,
        first_epoch=0,
        device=torch.device("cpu"),
        workers=None,
    )
    batch = next(iter(collector))
    collector.shutdown()
    for key in ("observation", "action", ("next", "observation")):
        assert torch.isfinite(batch[key]).all(), key


@pytest.mark.parametrize("frozen", [False, True])
def test_frozen_copy_and_freeze_keep_working(frozen):
    norm = _norm(StableVecNorm)
    _feed(norm, [torch.randn(4, 3) for _ in range(3)])
    copy = norm.frozen_copy() if frozen else norm
    before = copy._var["observation"].clone()
    _feed(copy, [torch.randn(4, 3) * 10])
    assert torch.equal(copy._var["observation"], before) == frozen
