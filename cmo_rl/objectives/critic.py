"""Regression of the reward and cost critics on their GAE targets, as a TorchRL loss.

.. math::

    \\mathcal{L}_{\\text{critic}} = c_V\\,\\mathbb{E}[(V_R(s) - \\hat V_R)^2], \\qquad
    \\mathcal{L}_{\\text{cost\\_critic}} = c_C\\,\\mathbb{E}[(V_C(s) - \\hat V_C)^2]

the critic half of :class:`~cmo_rl.objectives.LagrangianPPOLoss`, on its own: for methods whose
policy step is not a loss (CPO) and for critics fitted on the side (the meta-training inner
problem :class:`~cmo_rl.meta.problems.RolloutCMDP`). Targets come from the ``GAE`` modules of
:func:`~cmo_rl.objectives.make_value_estimators`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule
from tensordict.utils import NestedKey
from torch import nn
from torchrl.objectives import LossModule

__all__ = ["CriticLoss"]


def _unique(keys: Iterable[NestedKey]) -> list[NestedKey]:
    """``keys`` in order, each once."""
    out: list[NestedKey] = []
    for key in keys:
        if key not in out:
            out.append(key)
    return out


class _CriticLossBase(LossModule):
    """What :class:`CriticLoss` and :class:`~cmo_rl.objectives.LagrangianPPOLoss` share.

    Networks held as *plain submodules* (no TorchRL functional copies, so ``loss.parameters()``
    are the networks' own), coefficients as schedulable buffers, lazily built ``in_keys`` and
    ``out_keys``, no value estimator of its own (targets are inputs) and the regression of both
    critics on their targets. A subclass may extend ``_AcceptedKeys`` (the critics' keys; its
    ``default_keys`` follow) and defines ``_OUT_KEYS`` and ``_collect_in_keys``.
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable input keys (change with :meth:`set_keys`).

        Attributes:
            value_target / cost_value_target: regression targets of the critics ``[*B, 1]``.
                Defaults ``"value_target"``, ``"cost_value_target"``.
            value / cost_value: keys the critics write. Defaults ``"state_value"``,
                ``"cost_value"``.
        """

        value_target: NestedKey = "value_target"
        cost_value_target: NestedKey = "cost_value_target"
        value: NestedKey = "state_value"
        cost_value: NestedKey = "cost_value"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys
    _OUT_KEYS: tuple[str, ...] = ()

    critic_network: TensorDictModule
    cost_critic_network: TensorDictModule

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.default_keys = cls._AcceptedKeys  # what set_keys(name=None) restores

    def __init__(self, networks: dict[str, nn.Module], **coeffs: float) -> None:
        """Registers ``networks`` as submodules, in order, and ``coeffs`` (each >= 0) as buffers
        on the device of the first network's parameters."""
        for name, value in coeffs.items():
            if float(value) < 0.0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self._in_keys = None
        self._out_keys = None
        super().__init__()
        for name, network in networks.items():
            setattr(self, name, network)
        first = next(iter(networks.values()))
        device = next((p.device for p in first.parameters()), None)
        for name, value in coeffs.items():
            self.register_coeff_buffer(name, value, device=device)
        self.reduction = "mean"

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Parameter]]:
        # LossModule's override drops `remove_duplicate`, which torch.func.functional_call
        # passes (torch.nn.utils.stateless._untie_named_tensors_map): restore the full signature.
        for name, param in nn.Module.named_parameters(
            self, prefix=prefix, recurse=recurse, remove_duplicate=remove_duplicate
        ):
            if not name.startswith("_target"):
                yield name, param

    # ------------------------------------------------------------------------------- keys
    def _forward_value_estimator_keys(self, **kwargs: Any) -> None:
        # No value estimator inside: the targets are inputs. Just refresh the input keys.
        self._in_keys = None

    def _collect_in_keys(self) -> list[NestedKey]:
        raise NotImplementedError

    @property
    def in_keys(self) -> list[NestedKey]:
        if self._in_keys is None:
            self._in_keys = self._collect_in_keys()
        return self._in_keys

    @in_keys.setter
    def in_keys(self, values: list[NestedKey]) -> None:
        self._in_keys = values

    @property
    def out_keys(self) -> list[str]:
        if self._out_keys is None:
            self._out_keys = list(self._OUT_KEYS)
        return self._out_keys

    @out_keys.setter
    def out_keys(self, values: list[str]) -> None:
        self._out_keys = values

    def make_value_estimator(self, value_type: Any = None, **hyperparams: Any) -> LossModule:
        raise NotImplementedError(
            f"{type(self).__name__} does not own value estimators: build them with "
            "make_value_estimators(critic, cost_critic, gamma, lmbda) and run them on the batch"
        )

    # ---------------------------------------------------------------------------- forward
    def _regression(
        self,
        tensordict: TensorDictBase,
        network: TensorDictModule,
        value_key: NestedKey,
        target_key: NestedKey,
        target: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The masked mean of ``(V - target)^2`` (target detached) and the critic's ``V``."""
        value = network(tensordict).get(value_key)
        if value.shape != target.shape:
            raise ValueError(
                f"{value_key!r} has shape {tuple(value.shape)} but its target {target_key!r} has "
                f"shape {tuple(target.shape)}"
            )
        return self._reduce_loss((value - target.detach()).pow(2), tensordict), value

    def _critic_terms(
        self,
        tensordict: TensorDictBase,
        value_target: torch.Tensor,
        cost_value_target: torch.Tensor,
    ) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """``loss_critic`` and ``loss_cost_critic`` (times their coefficients) and both critics'
        values. The critics write their values into ``tensordict``."""
        keys = self.tensor_keys
        loss_critic, value = self._regression(
            tensordict, self.critic_network, keys.value, keys.value_target, value_target
        )
        loss_cost_critic, cost_value = self._regression(
            tensordict,
            self.cost_critic_network,
            keys.cost_value,
            keys.cost_value_target,
            cost_value_target,
        )
        losses = {
            "loss_critic": self.critic_coeff * loss_critic,
            "loss_cost_critic": self.cost_critic_coeff * loss_cost_critic,
        }
        return losses, (value, cost_value)


class CriticLoss(_CriticLossBase):
    """Mean squared error of both critics against their (detached) value targets.

    Like :class:`~cmo_rl.objectives.LagrangianPPOLoss`, the critics are held as *plain
    submodules* ``critic_network`` and ``cost_critic_network`` (no TorchRL functional copies),
    so ``loss.parameters()`` are the critics' own parameters.

    Args:
        critic: writes ``state_value``.
        cost_critic: writes ``cost_value``.
        critic_coeff: :math:`c_V` (a schedulable buffer, e.g. ``loss.critic_coeff = 0.5``).
        cost_critic_coeff: :math:`c_C` (a schedulable buffer).

    Input keys (any batch shape ``[*B]``): the critics' inputs (``observation``),
    ``value_target`` and ``cost_value_target`` ``[*B, 1]``. Rename with :meth:`set_keys`
    (fields ``value_target, cost_value_target, value, cost_value``). The input is not written
    to. As in any TorchRL loss, positions that a validity mask of the input marks invalid
    (``loss_mask_key``, default ``"auto"``: ``("collector", "mask")``) are left out of the means.

    Returns a TensorDict with ``loss_critic`` and ``loss_cost_critic``.

    Examples:
        >>> from cmo_rl.envs.factory import make_env
        >>> from cmo_rl.modules import make_cost_critic, make_value_critic
        >>> env = make_env("MockCMDP-v0", num_envs=2)
        >>> loss = CriticLoss(make_value_critic(env, (4,)), make_cost_critic(env, (4,)))
        >>> td = env.reset().set("value_target", torch.zeros(2, 1)).set("cost_value_target", torch.zeros(2, 1))
        >>> sorted(loss(td).keys())
        ['loss_cost_critic', 'loss_critic']
        >>> loss.set_keys(value_target="returns")
        >>> loss.in_keys
        ['observation', 'returns', 'cost_value_target']
    """

    _schedulable_buffers = frozenset({"critic_coeff", "cost_critic_coeff"})
    _OUT_KEYS = ("loss_critic", "loss_cost_critic")

    def __init__(
        self,
        critic: TensorDictModule,
        cost_critic: TensorDictModule,
        *,
        critic_coeff: float = 1.0,
        cost_critic_coeff: float = 1.0,
    ) -> None:
        super().__init__(
            {"critic_network": critic, "cost_critic_network": cost_critic},
            critic_coeff=critic_coeff,
            cost_critic_coeff=cost_critic_coeff,
        )

    def _collect_in_keys(self) -> list[NestedKey]:
        keys = self.tensor_keys
        return _unique(
            (
                *self.critic_network.in_keys,
                *self.cost_critic_network.in_keys,
                keys.value_target,
                keys.cost_value_target,
            )
        )

    def _target(self, tensordict: TensorDictBase, key: NestedKey) -> torch.Tensor:
        target = tensordict.get(key, None)
        if target is None:
            raise KeyError(
                f"the batch has no {key!r}: run the GAE modules of make_value_estimators "
                "(or cmo_rl.training.onpolicy.compute_advantages) on it first"
            )
        return target

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        tensordict = tensordict.clone(False)  # the critics write their values here
        keys = self.tensor_keys
        targets = [self._target(tensordict, k) for k in (keys.value_target, keys.cost_value_target)]
        losses, _ = self._critic_terms(tensordict, *targets)
        return TensorDict(losses)
