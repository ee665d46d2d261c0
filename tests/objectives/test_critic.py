"""CriticLoss: both critics' regression by hand, its TorchRL keys, coefficients and masks."""

from __future__ import annotations

import warnings

import pytest
import torch
from tensordict import TensorDict
from torch import nn
from torchrl.modules import ValueOperator
from torchrl.objectives import LossModule

from cmo_rl.objectives import CriticLoss, LagrangianPPOLoss


def _critics(value_key: str = "state_value", cost_value_key: str = "cost_value"):
    """Constant critics: ``V_R = 1`` and ``V_C = -1`` (zero weights), as ValueOperators."""
    critic, cost_critic = nn.Linear(1, 1), nn.Linear(1, 1)
    for module, bias in ((critic, 1.0), (cost_critic, -1.0)):
        nn.init.zeros_(module.weight)
        nn.init.constant_(module.bias, bias)
    return (
        ValueOperator(critic, in_keys=["observation"], out_keys=[value_key]),
        ValueOperator(cost_critic, in_keys=["observation"], out_keys=[cost_value_key]),
    )


def _batch(value_target: str = "value_target", cost_value_target: str = "cost_value_target"):
    return TensorDict(
        {
            "observation": torch.zeros(2, 1),
            value_target: torch.tensor([[3.0], [1.0]]),
            cost_value_target: torch.tensor([[0.0], [1.0]]),
        },
        batch_size=[2],
    )


def test_critic_loss_by_hand():
    loss = CriticLoss(*_critics())
    assert isinstance(loss, LossModule)
    td = _batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = loss(td)
    assert list(out.keys()) == ["loss_critic", "loss_cost_critic"]
    assert out["loss_critic"].item() == pytest.approx((4.0 + 0.0) / 2)  # V_R = 1
    assert out["loss_cost_critic"].item() == pytest.approx((1.0 + 4.0) / 2)  # V_C = -1
    assert set(td.keys()) == {"observation", "value_target", "cost_value_target"}  # not written
    (out["loss_critic"] + out["loss_cost_critic"]).backward()
    # d/db mean((b - t)^2) = mean(2 (b - t)): (2 (1 - 3) + 2 (1 - 1)) / 2 = -2 and
    # (2 (-1 - 0) + 2 (-1 - 1)) / 2 = -3
    critic_bias = loss.critic_network.module.bias
    cost_bias = loss.cost_critic_network.module.bias
    assert critic_bias.grad.item() == pytest.approx(-2.0)
    assert cost_bias.grad.item() == pytest.approx(-3.0)
    assert {id(p) for p in loss.parameters()} == {
        id(p) for m in (loss.critic_network, loss.cost_critic_network) for p in m.parameters()
    }


def test_coefficients_scale_each_term_and_are_schedulable():
    loss = CriticLoss(*_critics(), critic_coeff=0.5, cost_critic_coeff=2.0)
    out = loss(_batch())
    assert out["loss_critic"].item() == pytest.approx(0.5 * 2.0)
    assert out["loss_cost_critic"].item() == pytest.approx(2.0 * 2.5)
    loss.critic_coeff = 0.25  # in-place update of the buffer
    assert "critic_coeff" in dict(loss.named_buffers())
    assert loss(_batch())["loss_critic"].item() == pytest.approx(0.25 * 2.0)
    with pytest.raises(ValueError, match="cost_critic_coeff must be >= 0"):
        CriticLoss(*_critics(), cost_critic_coeff=-1.0)


def test_default_keys_are_those_of_the_lagrangian_loss():
    keys = CriticLoss(*_critics()).tensor_keys
    ppo_keys = LagrangianPPOLoss.default_keys()
    for name in ("value", "cost_value", "value_target", "cost_value_target"):
        assert getattr(keys, name) == getattr(ppo_keys, name)
    assert (keys.value, keys.value_target) == ("state_value", "value_target")
    assert (keys.cost_value, keys.cost_value_target) == ("cost_value", "cost_value_target")
    assert CriticLoss(*_critics()).in_keys == ["observation", "value_target", "cost_value_target"]


def test_set_keys_renames_inputs_and_critic_outputs():
    loss = CriticLoss(*_critics(value_key="v", cost_value_key=("costs", "v")))
    loss.set_keys(
        value="v",
        cost_value=("costs", "v"),
        value_target="returns",
        cost_value_target=("costs", "target"),
    )
    assert loss.in_keys == ["observation", "returns", ("costs", "target")]
    out = loss(_batch(value_target="returns", cost_value_target=("costs", "target")))
    assert out["loss_critic"].item() == pytest.approx(2.0)
    assert out["loss_cost_critic"].item() == pytest.approx(2.5)
    with pytest.raises(KeyError, match="the batch has no 'returns'"):
        loss(_batch())  # the default names are not read any more
    loss.set_keys(value_target=None)  # back to the default
    assert loss.tensor_keys.value_target == "value_target"
    assert "value_target" in loss.in_keys
    with pytest.raises(ValueError, match="not an accepted tensordict key"):
        loss.set_keys(reward="r")


def test_errors_name_the_missing_key_and_shape_mismatches():
    loss = CriticLoss(*_critics())
    with pytest.raises(KeyError, match="cost_value_target.*make_value_estimators"):
        loss(_batch().exclude("cost_value_target"))
    flat_target = _batch().set("value_target", torch.tensor([3.0, 1.0]))
    with pytest.raises(ValueError, match=r"'state_value' has shape \(2, 1\).*\(2,\)"):
        loss(flat_target)
    with pytest.raises(NotImplementedError, match="make_value_estimators"):
        loss.make_value_estimator()


def test_collector_mask_leaves_padded_steps_out_of_the_means():
    loss = CriticLoss(*_critics())
    td = _batch().set(("collector", "mask"), torch.tensor([True, False]))
    out = loss(td)
    assert out["loss_critic"].item() == pytest.approx(4.0)  # (1 - 3)^2 only
    assert out["loss_cost_critic"].item() == pytest.approx(1.0)  # (-1 - 0)^2 only


def test_functional_call_uses_swapped_parameters():
    loss = CriticLoss(*_critics())
    params = {k: v.detach().clone() for k, v in loss.named_parameters()}
    (bias_name,) = [k for k in params if k.startswith("critic_network") and k.endswith("bias")]
    params[bias_name] = torch.tensor([3.0], requires_grad=True)  # V_R = 3 now
    out = torch.func.functional_call(loss, params, (_batch(),))
    assert out["loss_critic"].item() == pytest.approx((0.0 + 4.0) / 2)
    out["loss_critic"].backward()
    assert params[bias_name].grad.item() == pytest.approx((0.0 + 2 * 2.0) / 2)
    assert loss.critic_network.module.bias.item() == 1.0  # the module's own value is kept
