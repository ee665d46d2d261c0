"""Gaussian actor and reward/cost value critics built from env specs.

The actor is the usual on-policy safe-RL policy (OmniSafe, CleanRL): an MLP gives the mean, a
learned *state-independent* log-std gives the scale,

.. math::

    \\mu = f_\\theta(o), \\qquad \\sigma = e^{\\log\\sigma}, \\qquad
    a \\sim \\mathcal{N}(\\mu, \\operatorname{diag}\\sigma^2)\\;\\text{or}\\;
    a = \\operatorname{low} + (\\operatorname{high}-\\operatorname{low})\\,
        \\tfrac{1 + \\tanh u}{2},\\; u \\sim \\mathcal{N}(\\mu, \\sigma^2)

Keys (``B`` any batch shape): actor reads ``observation`` ``[*B, obs_dim]`` and writes ``loc``,
``scale``, ``action`` ``[*B, act_dim]`` and ``action_log_prob`` ``[*B]``; the critics read
``observation`` and write ``state_value`` / ``cost_value`` ``[*B, 1]``.

All modules are plain ``nn.Module`` trees without in-place parameter writes in ``forward``, so
they work with ``TensorDict.from_module(m)`` / ``params.to_module(m, preserve_module_state=False)``
and ``torch.func.functional_call``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from tensordict.nn import InteractionType, TensorDictModule
from torch import nn
from torchrl.data import Bounded, Composite, TensorSpec, Unbounded
from torchrl.modules import IndependentNormal, ProbabilisticActor, TanhNormal, ValueOperator

__all__ = [
    "ActorCritic",
    "ClippedModeNormal",
    "StateIndependentScale",
    "actor_critic_from_env",
    "make_actor",
    "make_cost_critic",
    "make_value_critic",
]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}
_DISTRIBUTIONS = ("normal", "tanh_normal")
_HIDDEN_GAIN = math.sqrt(2.0)  # CleanRL / OmniSafe orthogonal init gains
_ACTOR_OUT_GAIN = 0.01
_CRITIC_OUT_GAIN = 1.0


class ClippedModeNormal(IndependentNormal):
    """Diagonal Gaussian whose deterministic action is its mean clipped to ``[low, high]``.

    Sampling and ``log_prob`` are those of the unclipped Gaussian (the env clips executed
    actions, as in OmniSafe), so stored ``action_log_prob`` values stay exact for PPO ratios.

    Args:
        loc: ``[*B, act_dim]`` mean.
        scale: ``[*B, act_dim]`` standard deviation.
        low: lower action bound broadcastable to ``loc`` (float or tensor); ``None`` for no
            clipping.
        high: upper action bound, as ``low``.

    Examples:
        >>> d = ClippedModeNormal(torch.tensor([[2.0, -0.3]]), torch.ones(1, 2), low=-1.0, high=1.0)
        >>> d.deterministic_sample
        tensor([[ 1.0000, -0.3000]])
    """

    def __init__(
        self,
        loc: torch.Tensor,
        scale: torch.Tensor,
        low: torch.Tensor | float | None = None,
        high: torch.Tensor | float | None = None,
    ) -> None:
        super().__init__(loc, scale)
        self.low = low
        self.high = high

    @property
    def deterministic_sample(self) -> torch.Tensor:
        mean = self.mean
        low, high = self.low, self.high
        if isinstance(low, torch.Tensor):
            low = low.to(mean.device)
        if isinstance(high, torch.Tensor):
            high = high.to(mean.device)
        if low is None and high is None:
            return mean
        return mean.clamp(low, high)


class StateIndependentScale(nn.Module):
    """Maps ``loc`` to ``(loc, scale)`` with a learned, state-independent log-std.

    .. math:: \\sigma = \\exp(\\log\\sigma) \\in \\mathbb{R}^{act\\_dim}

    Args:
        act_dim: action dimension.
        init_log_std: initial value of every entry of ``log_std``.
        device: device of the parameter.

    Examples:
        >>> m = StateIndependentScale(2, init_log_std=0.0)
        >>> loc, scale = m(torch.zeros(3, 2))
        >>> scale
        tensor([[1., 1.],
                [1., 1.],
                [1., 1.]], grad_fn=<ExpandBackward0>)
    """

    def __init__(
        self, act_dim: int, init_log_std: float = -0.5, device: torch.device | str | None = None
    ) -> None:
        super().__init__()
        self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std), device=device))

    def forward(self, loc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return loc, self.log_std.exp().expand_as(loc)


def _split_specs(env_or_specs: Any) -> tuple[TensorSpec, TensorSpec | None]:
    """Returns ``(observation leaf spec, action spec or None)`` from an env or a spec tuple."""
    if isinstance(env_or_specs, (tuple, list)):
        if len(env_or_specs) != 2:
            raise ValueError(
                "expected an env or a pair (observation_spec, action_spec), got a sequence of "
                f"length {len(env_or_specs)}"
            )
        obs_spec, action_spec = env_or_specs
    elif hasattr(env_or_specs, "observation_spec"):
        obs_spec, action_spec = env_or_specs.observation_spec, env_or_specs.action_spec
    elif isinstance(env_or_specs, TensorSpec):
        obs_spec, action_spec = env_or_specs, None
    else:
        raise ValueError(
            "expected an env (with observation_spec/action_spec) or a pair "
            f"(observation_spec, action_spec), got {type(env_or_specs).__name__}"
        )
    if isinstance(obs_spec, Composite):
        if "observation" not in obs_spec.keys():
            raise ValueError(
                "the observation spec has no 'observation' entry; found keys "
                f"{list(obs_spec.keys(True, True))}"
            )
        obs_spec = obs_spec["observation"]
    if isinstance(action_spec, Composite):
        if "action" not in action_spec.keys():
            raise ValueError(
                f"the action spec has no 'action' entry; found {list(action_spec.keys(True, True))}"
            )
        action_spec = action_spec["action"]
    return obs_spec, action_spec


def _feature_dim(spec: TensorSpec, what: str) -> int:
    if len(spec.shape) == 0:
        raise ValueError(f"the {what} spec must have a feature dimension, got shape {spec.shape}")
    if not spec.dtype.is_floating_point:
        raise ValueError(f"the {what} spec must be floating point, got dtype {spec.dtype}")
    return int(spec.shape[-1])


def _mlp(
    in_dim: int,
    out_dim: int,
    hidden_layers: Sequence[int],
    activation: str,
    out_gain: float,
    device: torch.device | str | None,
) -> nn.Sequential:
    """``Linear -> act -> ... -> Linear`` with orthogonal weights and zero biases."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(_ACTIVATIONS)}")
    hidden = list(hidden_layers)
    if any((not isinstance(h, int)) or isinstance(h, bool) or h < 1 for h in hidden):
        raise ValueError(f"hidden_layers must be positive ints, got {tuple(hidden_layers)}")
    layers: list[nn.Module] = []
    sizes = [in_dim, *hidden]
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [_orthogonal(nn.Linear(fan_in, fan_out, device=device), _HIDDEN_GAIN)]
        layers.append(_ACTIVATIONS[activation]())
    layers.append(_orthogonal(nn.Linear(sizes[-1], out_dim, device=device), out_gain))
    return nn.Sequential(*layers)


def _orthogonal(layer: nn.Linear, gain: float) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def make_actor(
    env_or_specs: Any,
    hidden_layers: Sequence[int] = (64, 64),
    activation: str = "tanh",
    distribution: str = "normal",
    init_log_std: float = -0.5,
    device: torch.device | str | None = None,
) -> ProbabilisticActor:
    """Gaussian policy with a state-independent log-std, built from env specs.

    Args:
        env_or_specs: an env, or ``(observation_spec, action_spec)``. The observation is read
            from key ``"observation"``; the action spec must be continuous.
        hidden_layers: widths of the hidden layers of the mean MLP.
        activation: ``"tanh"`` (default), ``"relu"``, ``"elu"``, ``"gelu"``, ``"silu"`` or
            ``"leaky_relu"``.
        distribution: ``"normal"`` — a diagonal Gaussian (:class:`ClippedModeNormal`), actions
            clipped by the env, deterministic action = mean clipped to the bounds; or
            ``"tanh_normal"`` — :class:`~torchrl.modules.TanhNormal` squashed into the action
            spec's bounds (needs a ``Bounded`` action spec).
        init_log_std: initial log standard deviation.
        device: device of the parameters.

    Returns:
        A :class:`~torchrl.modules.ProbabilisticActor` writing ``loc``, ``scale``, ``action``
        and ``action_log_prob``. It samples by default (also in ``env.rollout``);
        deterministic evaluation:
        ``with set_exploration_type(ExplorationType.DETERMINISTIC): actor(td)``.

    Examples:
        >>> from cmo_rl.testing import MockCMDPEnv
        >>> from torchrl.envs.utils import ExplorationType, set_exploration_type
        >>> env = MockCMDPEnv(num_envs=2, seed=0)
        >>> actor = make_actor(env, hidden_layers=(8,))
        >>> td = actor(env.reset())
        >>> td["action"].shape, td["action_log_prob"].shape
        (torch.Size([2, 1]), torch.Size([2]))
        >>> with set_exploration_type(ExplorationType.DETERMINISTIC):
        ...     td = actor(env.reset())
        >>> bool((td["action"] == td["loc"].clamp(-1, 1)).all())
        True
    """
    if distribution not in _DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {distribution!r}; choose one of {_DISTRIBUTIONS}")
    obs_spec, action_spec = _split_specs(env_or_specs)
    if action_spec is None:
        raise ValueError("make_actor needs an action spec: pass an env or (obs_spec, action_spec)")
    if not isinstance(action_spec, (Bounded, Unbounded)):
        raise ValueError(
            "make_actor builds a Gaussian policy and needs a continuous Bounded or Unbounded "
            f"action spec, got {type(action_spec).__name__}"
        )
    obs_dim = _feature_dim(obs_spec, "observation")
    act_dim = _feature_dim(action_spec, "action")

    net = nn.Sequential(
        _mlp(obs_dim, act_dim, hidden_layers, activation, _ACTOR_OUT_GAIN, device),
        StateIndependentScale(act_dim, init_log_std, device=device),
    )
    module = TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"])

    if isinstance(action_spec, Bounded):
        low = action_spec.space.low.reshape(-1, act_dim)[0].to(device=device, dtype=torch.float32)
        high = action_spec.space.high.reshape(-1, act_dim)[0].to(device=device, dtype=torch.float32)
        if not bool((high > low).all()):
            raise ValueError(f"action bounds must satisfy high > low, got low={low}, high={high}")
        spec = Bounded(low, high, shape=(act_dim,), dtype=torch.float32, device=device)
    else:
        low = high = None
        spec = Unbounded(shape=(act_dim,), dtype=torch.float32, device=device)

    if distribution == "tanh_normal":
        if low is None:
            raise ValueError("distribution='tanh_normal' needs a Bounded action spec")
        dist_class, dist_kwargs = TanhNormal, {"low": low, "high": high}
    else:
        dist_class, dist_kwargs = ClippedModeNormal, {"low": low, "high": high}

    return ProbabilisticActor(
        module,
        in_keys=["loc", "scale"],
        out_keys=["action"],
        spec=spec,
        distribution_class=dist_class,
        distribution_kwargs=dist_kwargs,
        return_log_prob=True,
        log_prob_key="action_log_prob",
        default_interaction_type=InteractionType.RANDOM,
    )


def _make_critic(
    env_or_specs: Any,
    out_key: str,
    hidden_layers: Sequence[int],
    activation: str,
    device: torch.device | str | None,
) -> ValueOperator:
    obs_spec, _ = _split_specs(env_or_specs)
    obs_dim = _feature_dim(obs_spec, "observation")
    net = _mlp(obs_dim, 1, hidden_layers, activation, _CRITIC_OUT_GAIN, device)
    return ValueOperator(net, in_keys=["observation"], out_keys=[out_key])


def make_value_critic(
    env_or_specs: Any,
    hidden_layers: Sequence[int] = (64, 64),
    activation: str = "tanh",
    device: torch.device | str | None = None,
) -> ValueOperator:
    """Reward critic :math:`V_R(o)`: reads ``observation``, writes ``state_value`` ``[*B, 1]``.

    Args:
        env_or_specs: an env, an observation spec, or ``(observation_spec, action_spec)``.
        hidden_layers: as in :func:`make_actor`.
        activation: as in :func:`make_actor`.
        device: as in :func:`make_actor`.

    Examples:
        >>> from cmo_rl.testing import MockCMDPEnv
        >>> critic = make_value_critic(MockCMDPEnv(num_envs=3), hidden_layers=(8,))
        >>> critic(MockCMDPEnv(num_envs=3).reset())["state_value"].shape
        torch.Size([3, 1])
    """
    return _make_critic(env_or_specs, "state_value", hidden_layers, activation, device)


def make_cost_critic(
    env_or_specs: Any,
    hidden_layers: Sequence[int] = (64, 64),
    activation: str = "tanh",
    device: torch.device | str | None = None,
) -> ValueOperator:
    """Cost critic :math:`V_C(o)`: reads ``observation``, writes ``cost_value`` ``[*B, 1]``.

    Args: as in :func:`make_value_critic`.

    Examples:
        >>> from cmo_rl.testing import MockCMDPEnv
        >>> cost_critic = make_cost_critic(MockCMDPEnv(num_envs=3), hidden_layers=(8,))
        >>> cost_critic(MockCMDPEnv(num_envs=3).reset())["cost_value"].shape
        torch.Size([3, 1])
    """
    return _make_critic(env_or_specs, "cost_value", hidden_layers, activation, device)


class ActorCritic(NamedTuple):
    """The three networks of a safe on-policy agent.

    Examples:
        >>> from cmo_rl.testing import MockCMDPEnv
        >>> env = MockCMDPEnv(num_envs=2)
        >>> agent = ActorCritic(make_actor(env, (8,)), make_value_critic(env, (8,)),
        ...                     make_cost_critic(env, (8,)))
        >>> actor, critic, cost_critic = agent  # a NamedTuple: unpacks like the tuple it is
        >>> agent.cost_critic(env.reset())["cost_value"].shape
        torch.Size([2, 1])
    """

    actor: ProbabilisticActor
    critic: ValueOperator
    cost_critic: ValueOperator


def actor_critic_from_env(
    env_or_specs: Any,
    hidden_layers: Sequence[int] = (64, 64),
    critic_hidden_layers: Sequence[int] | None = None,
    activation: str = "tanh",
    distribution: str = "normal",
    init_log_std: float = -0.5,
    device: torch.device | str | None = None,
    **ignored: Any,
) -> ActorCritic:
    """Builds ``ActorCritic(actor, critic, cost_critic)`` from an env and config-like kwargs.

    Args:
        env_or_specs: an env or ``(observation_spec, action_spec)``.
        hidden_layers: actor widths (and critic widths unless ``critic_hidden_layers`` is set).
        critic_hidden_layers: widths of both critics.
        activation: as in :func:`make_actor`.
        distribution: as in :func:`make_actor`.
        init_log_std: as in :func:`make_actor`.
        device: as in :func:`make_actor`.
        **ignored: other config entries (so a whole ``cfg.model`` mapping can be splatted in)
            are ignored, except near-misses of the names above (case/underscore-insensitive),
            which raise ``ValueError``.

    Examples:
        >>> from cmo_rl.testing import MockCMDPEnv
        >>> ac = actor_critic_from_env(MockCMDPEnv(num_envs=2), hidden_layers=(8,))
        >>> sorted(ac._fields)
        ['actor', 'cost_critic', 'critic']
    """
    known = {"hidden_layers", "critic_hidden_layers", "activation", "distribution", "init_log_std"}
    for name in ignored:
        close = [k for k in known if k.replace("_", "") == name.replace("_", "").lower()]
        if close:
            raise ValueError(f"unknown model option {name!r}; did you mean {close[0]!r}?")
    critic_layers = hidden_layers if critic_hidden_layers is None else critic_hidden_layers
    return ActorCritic(
        actor=make_actor(
            env_or_specs, hidden_layers, activation, distribution, init_log_std, device
        ),
        critic=make_value_critic(env_or_specs, critic_layers, activation, device),
        cost_critic=make_cost_critic(env_or_specs, critic_layers, activation, device),
    )
