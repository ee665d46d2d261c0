"""Constrained Policy Optimization (Achiam et al. 2017): one trust-region step with a cost constraint.

Around the current policy, with :math:`x = \\theta - \\theta_k`, reward-surrogate gradient
:math:`g`, cost-surrogate gradient :math:`b`, constraint value :math:`c = J_C - d` and the KL
Hessian (Fisher) :math:`H`, CPO solves

.. math::

    \\max_x\\; g^\\top x \\quad\\text{s.t.}\\quad \\tfrac12 x^\\top H x \\le \\delta, \\qquad
    c + b^\\top x \\le 0

in closed form through its dual (with :math:`q = g^\\top H^{-1} g,\\ r = g^\\top H^{-1} b,\\
s = b^\\top H^{-1} b`):

.. math::

    x^* = \\frac{1}{\\lambda^*}\\big(H^{-1} g - \\nu^* H^{-1} b\\big), \\qquad
    \\nu^* = \\frac{(\\lambda^* c + r)_+}{s},

then backtracks along :math:`x^*` until the KL and the cost surrogate are acceptable.
:math:`H^{-1}v` comes from conjugate gradient on Fisher-vector products.

.. note::
   Here :math:`g` is the *ascent* gradient of the reward surrogate (OmniSafe's ``grads``).
   OmniSafe's ``cpo.py`` takes its case analysis and line search from Achiam's reference code,
   which is written for the *descent* gradient :math:`g_{\\min} = -g`, but keeps the formulas in
   :math:`r` unchanged (``nu = (lambda * c - r)_+ / s`` and the projections onto ``r / c``);
   with :math:`r_{\\min} = -r` the dual solution is the one above. The unit tests check the
   step against the KKT conditions and a brute-force search of the feasible set.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import ProbabilisticTensorDictSequential
from tensordict.utils import NestedKey
from torch.distributions import Distribution, kl_divergence

from cmo_rl.objectives.lagrangian import normalize_advantages

__all__ = [
    "CPOStep",
    "CPOUpdate",
    "conjugate_gradient",
    "cpo_step_direction",
    "fisher_vector_product",
    "make_fisher_vector_product",
]

_EPS = 1e-8
_DUAL_EPS = 1e-12  # guards divisions by q, s, B, lambda that vanish only in degenerate cases


def conjugate_gradient(
    Avp: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    iters: int = 15,
    residual_tol: float = 1e-10,
) -> torch.Tensor:
    """Solves :math:`A x = b` for symmetric positive-definite :math:`A` given only ``Avp(v) = A v``.

    Standard CG from :math:`x_0 = 0`, stopping after ``iters`` steps, once
    :math:`\\lVert r \\rVert^2 <` ``residual_tol``, or if :math:`p^\\top A p \\le 0`.
    Out-of-place updates only.

    Examples:
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]])
        >>> conjugate_gradient(lambda v: A @ v, torch.tensor([1.0, 2.0]), iters=2)
        tensor([0.0909, 0.6364])
    """
    if b.ndim != 1:
        raise ValueError(f"b must be a flat vector, got shape {tuple(b.shape)}")
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rdotr = r @ r
    for _ in range(iters):
        if float(rdotr) < residual_tol:
            break
        Ap = Avp(p)
        curvature = p @ Ap
        if not float(curvature) > 0:  # A not positive definite along p: stop with the iterate
            break
        alpha = rdotr / curvature
        x = x + alpha * p
        r = r - alpha * Ap
        new_rdotr = r @ r
        p = r + (new_rdotr / rdotr) * p
        rdotr = new_rdotr
    return x


def _actor_params(actor: torch.nn.Module) -> list[torch.nn.Parameter]:
    params = [p for p in actor.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the actor has no trainable parameters")
    return params


def _flat_grad(
    output: torch.Tensor, params: list[torch.nn.Parameter], **kwargs: bool
) -> torch.Tensor:
    grads = torch.autograd.grad(output, params, allow_unused=True, **kwargs)
    return torch.cat(
        [
            torch.zeros_like(p).reshape(-1) if g is None else g.reshape(-1)
            for g, p in zip(grads, params)
        ]
    )


def _detached_dist(actor: ProbabilisticTensorDictSequential, td: TensorDictBase) -> Distribution:
    with torch.no_grad():
        return actor.get_dist(td.clone(False))


def make_fisher_vector_product(
    actor: ProbabilisticTensorDictSequential, td: TensorDictBase, damping: float = 0.1
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> (H + damping I) v`` with :math:`H = \\nabla^2_\\theta\\,
    \\mathbb{E}_{s\\sim td}\\,\\mathrm{KL}(\\pi_{\\theta_k}(\\cdot|s)\\,\\|\\,\\pi_\\theta(\\cdot|s))\\big|_{\\theta_k}`.

    The KL gradient graph is built once, each call is one extra backward (Pearlmutter's trick).
    ``v`` is flat, ordered as ``[p for p in actor.parameters() if p.requires_grad]``.

    Examples:
        >>> from cmo_rl.modules import make_actor
        >>> from cmo_rl.testing import MockCMDPEnv
        >>> env = MockCMDPEnv(num_envs=8, seed=0)
        >>> actor = make_actor(env, hidden_layers=(4,))
        >>> fvp = make_fisher_vector_product(actor, env.reset(), damping=0.1)
        >>> v = torch.randn(sum(p.numel() for p in actor.parameters()))
        >>> bool(v @ fvp(v) >= 0.1 * v @ v)  # H is positive semi-definite
        True
    """
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    params = _actor_params(actor)
    old = _detached_dist(actor, td)
    with torch.enable_grad():
        kl = kl_divergence(old, actor.get_dist(td.clone(False))).mean()
        grad_kl = _flat_grad(kl, params, create_graph=True)

    def fvp(vector: torch.Tensor) -> torch.Tensor:
        if vector.shape != grad_kl.shape:
            raise ValueError(
                f"vector must have {grad_kl.numel()} entries (the actor's flat parameters), "
                f"got shape {tuple(vector.shape)}"
            )
        with torch.enable_grad():
            hv = _flat_grad(grad_kl @ vector.detach(), params, retain_graph=True)
        return hv + damping * vector

    return fvp


def fisher_vector_product(
    actor: ProbabilisticTensorDictSequential,
    td: TensorDictBase,
    vector: torch.Tensor,
    damping: float = 0.1,
) -> torch.Tensor:
    """One Fisher-vector product :math:`(H + \\text{damping}\\,I)\\,v` (see
    :func:`make_fisher_vector_product`, which reuses the graph across calls).

    Examples:
        >>> from cmo_rl.modules import make_actor
        >>> from cmo_rl.testing import MockCMDPEnv
        >>> env = MockCMDPEnv(num_envs=4, seed=0)
        >>> actor = make_actor(env, hidden_layers=(4,))
        >>> n = sum(p.numel() for p in actor.parameters())
        >>> fisher_vector_product(actor, env.reset(), torch.zeros(n), damping=0.1).abs().max()
        tensor(0.)
    """
    return make_fisher_vector_product(actor, td, damping)(vector)


class CPOStep(NamedTuple):
    """The closed-form CPO step and its dual variables.

    ``optim_case``: 4 — no cost gradient and feasible, 3 — whole trust region feasible
    (both plain TRPO steps), 2 — feasible but the constraint cuts the trust region,
    1 — infeasible but recoverable inside the trust region, 0 — infeasible recovery
    :math:`x = -\\sqrt{2\\delta / s}\\,H^{-1} b`.

    Examples:
        >>> g, b = torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])  # H = I: H^-1 g = g
        >>> step = cpo_step_direction(g, b, 2.0, g, b, target_kl=0.5)  # c = 2: out of reach
        >>> step.optim_case, round(step.nu_star, 4), step.direction  # x = -sqrt(2 delta / s) b
        (0, 1.0, tensor([-1., -0.]))
    """

    direction: torch.Tensor
    optim_case: int
    lambda_star: float
    nu_star: float
    q: float
    r: float
    s: float
    A: float
    B: float


def _dual_solution(
    q: float, r: float, s: float, c: float, A: float, B: float, target_kl: float
) -> tuple[float, float]:
    """:math:`(\\lambda^*, \\nu^*)` of the CPO dual in cases 1 and 2 (Achiam's reference logic)."""
    lam_a = math.sqrt(max(A, 0.0) / (B + _DUAL_EPS))
    lam_b = math.sqrt(q / (2.0 * target_kl))

    def f_a(lam: float) -> float:  # dual value where nu > 0
        return -0.5 * (A / (lam + _DUAL_EPS) + B * lam) + r * c / (s + _DUAL_EPS)

    def f_b(lam: float) -> float:  # dual value where nu = 0
        return -0.5 * (q / (lam + _DUAL_EPS) + 2.0 * target_kl * lam)

    if c == 0.0:
        lam = lam_a if r > 0 else lam_b
    else:
        lam_mid = -r / c  # nu(lambda) = (lambda c + r) / s changes sign here
        if lam_mid > 0:
            if c < 0:  # nu > 0 on (0, lam_mid)
                lam_a, lam_b = min(lam_a, lam_mid), max(lam_b, lam_mid)
            else:  # nu > 0 on (lam_mid, inf)
                lam_a, lam_b = max(lam_a, lam_mid), min(lam_b, lam_mid)
            lam = lam_a if f_a(lam_a) >= f_b(lam_b) else lam_b
        else:
            lam = lam_b if c < 0 else lam_a
    nu = max(0.0, lam * c + r) / (s + _DUAL_EPS)
    return lam, nu


def cpo_step_direction(
    g: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor | float,
    Hinv_g: torch.Tensor,
    Hinv_b: torch.Tensor,
    target_kl: float,
    *,
    cost_grad_tol: float = 1e-6,
) -> CPOStep:
    """Closed-form solution of CPO's linear-quadratic subproblem (see the module docstring).

    Args:
        g: reward-surrogate gradient (ascent direction), flat ``[n]``.
        b: cost-surrogate gradient, ``[n]``.
        c: constraint value :math:`J_C - d` (in the surrogate's units).
        Hinv_g: :math:`H^{-1}g` (e.g. from :func:`conjugate_gradient`).
        Hinv_b: :math:`H^{-1}b` (e.g. from :func:`conjugate_gradient`).
        target_kl: trust-region size :math:`\\delta`.
        cost_grad_tol: below this :math:`\\lVert b\\rVert^2` (and with :math:`c<0`) the
            constraint is ignored (case 4).

    Examples:
        >>> H = torch.eye(2); g = torch.tensor([1.0, 1.0]); b = torch.tensor([1.0, 0.0])
        >>> step = cpo_step_direction(g, b, -0.1, g, b, target_kl=0.5)
        >>> step.optim_case, step.direction  # max x1 + x2 s.t. |x| <= 1, x1 <= 0.1
        (2, tensor([0.1000, 0.9950]))
    """
    if not target_kl > 0:
        raise ValueError(f"target_kl must be > 0, got {target_kl}")
    for name, v in (("g", g), ("b", b), ("Hinv_g", Hinv_g), ("Hinv_b", Hinv_b)):
        if v.shape != g.shape or v.ndim != 1:
            raise ValueError(
                f"{name} must be a flat vector of shape {tuple(g.shape)}, got {tuple(v.shape)}"
            )
    c = float(c)
    delta = float(target_kl)
    q, r, s = float(g @ Hinv_g), float(g @ Hinv_b), float(b @ Hinv_b)
    if not all(math.isfinite(v) for v in (q, r, s, c)):
        raise ValueError(f"non-finite CPO quantities: q={q}, r={r}, s={s}, c={c}")
    if float(b @ b) <= cost_grad_tol and c < 0:
        optim_case, A, B = 4, 0.0, 0.0
    else:
        A = q - r * r / (s + _DUAL_EPS)
        B = 2.0 * delta - c * c / (s + _DUAL_EPS)
        if c < 0 and B < 0:
            optim_case = 3
        elif c < 0 <= B:
            optim_case = 2
        elif c >= 0 and B >= 0:
            optim_case = 1
        else:
            optim_case = 0

    if optim_case in (3, 4):
        lam, nu = math.sqrt(q / (2.0 * delta)), 0.0
        direction = math.sqrt(2.0 * delta / (q + _DUAL_EPS)) * Hinv_g
    elif optim_case in (1, 2):
        lam, nu = _dual_solution(q, r, s, c, A, B, delta)
        direction = (Hinv_g - nu * Hinv_b) / (lam + _DUAL_EPS)
    else:
        lam, nu = 0.0, math.sqrt(2.0 * delta / (s + _DUAL_EPS))
        direction = -nu * Hinv_b
    return CPOStep(direction, optim_case, lam, nu, q, r, s, A, B)


@dataclass
class _CPOKeys:
    action: NestedKey = "action"
    sample_log_prob: NestedKey = "action_log_prob"
    advantage: NestedKey = "advantage"
    cost_advantage: NestedKey = "cost_advantage"


class CPOUpdate:
    """One CPO policy update per call of :meth:`step`; the actor is updated in place.

    Args:
        actor: probabilistic actor (``get_dist``), e.g. :func:`cmo_rl.modules.make_actor`.
        cost_limit: :math:`d`.
        target_kl: :math:`\\delta`.
        cg_iters: conjugate-gradient steps.
        cg_damping: Fisher damping.
        line_search_steps: backtracking tries at most (OmniSafe: 20).
        line_search_decay: backtracking factor, :math:`x \\leftarrow 0.8\\,x` (OmniSafe: 0.8).
        kl_tolerance: accept a step if :math:`\\mathrm{KL} \\le` ``kl_tolerance`` :math:`\\delta`
            (OmniSafe: 1.5).
        normalize_advantage: :func:`~cmo_rl.objectives.normalize_advantages` on the batch.
        fvp_sample_freq: use every k-th sample for Fisher-vector products.

    Input keys (rename with :meth:`set_keys`): ``observation``, ``action``,
    ``action_log_prob`` ``[*B]``, ``advantage``, ``cost_advantage`` ``[*B, 1]``.

    A step is accepted when the surrogate losses are finite, KL is within tolerance, the cost
    surrogate rises by at most :math:`\\max(-c, 0)` and (cases 2-4) the reward surrogate does not
    decrease; otherwise the actor is left unchanged (``acceptance_step = 0``).

    Examples:
        >>> from cmo_rl.modules import actor_critic_from_env
        >>> from cmo_rl.objectives import make_value_estimators
        >>> from cmo_rl.testing import MockCMDPEnv
        >>> env = MockCMDPEnv(num_envs=4, episode_length=10, seed=0)
        >>> actor, critic, cost_critic = actor_critic_from_env(env, hidden_layers=(16,))
        >>> gae, cost_gae = make_value_estimators(critic, cost_critic)
        >>> with torch.no_grad():
        ...     batch = cost_gae(gae(env.rollout(10, actor))).reshape(-1)
        >>> cpo = CPOUpdate(actor, cost_limit=1.0, target_kl=0.01)
        >>> info = cpo.step(batch, episode_cost=batch["next", "cost"].sum() / 4)
        >>> bool(info["kl"] <= 1.5 * 0.01)
        True
    """

    def __init__(
        self,
        actor: ProbabilisticTensorDictSequential,
        cost_limit: float,
        target_kl: float = 0.01,
        cg_iters: int = 15,
        cg_damping: float = 0.1,
        line_search_steps: int = 20,
        line_search_decay: float = 0.8,
        kl_tolerance: float = 1.5,
        normalize_advantage: bool = True,
        fvp_sample_freq: int = 1,
    ) -> None:
        if not hasattr(actor, "get_dist"):
            raise ValueError(f"actor must have get_dist, got {type(actor).__name__}")
        if not target_kl > 0:
            raise ValueError(f"target_kl must be > 0, got {target_kl}")
        if cg_iters < 1 or line_search_steps < 1 or fvp_sample_freq < 1:
            raise ValueError(
                "cg_iters, line_search_steps and fvp_sample_freq must be >= 1, got "
                f"{cg_iters}, {line_search_steps}, {fvp_sample_freq}"
            )
        if not 0.0 < line_search_decay < 1.0:
            raise ValueError(f"line_search_decay must be in (0, 1), got {line_search_decay}")
        if cg_damping < 0 or kl_tolerance < 1.0:
            raise ValueError(
                f"need cg_damping >= 0 and kl_tolerance >= 1, got {cg_damping}, {kl_tolerance}"
            )
        self.actor = actor
        self.cost_limit = float(cost_limit)
        self.target_kl = float(target_kl)
        self.cg_iters = int(cg_iters)
        self.cg_damping = float(cg_damping)
        self.line_search_steps = int(line_search_steps)
        self.line_search_decay = float(line_search_decay)
        self.kl_tolerance = float(kl_tolerance)
        self.normalize_advantage = bool(normalize_advantage)
        self.fvp_sample_freq = int(fvp_sample_freq)
        self.tensor_keys = _CPOKeys()

    def set_keys(self, **kwargs: NestedKey) -> None:
        """Renames input keys (``action``, ``sample_log_prob``, ``advantage``, ``cost_advantage``)."""
        valid = {f.name for f in fields(_CPOKeys)}
        for name, key in kwargs.items():
            if name not in valid:
                raise ValueError(f"{name!r} is not a CPOUpdate key; valid: {sorted(valid)}")
            setattr(self.tensor_keys, name, key)

    def _get(self, td: TensorDictBase, key: NestedKey) -> torch.Tensor:
        value = td.get(key, None)
        if value is None:
            raise KeyError(f"the key {key!r} is missing from the CPO batch")
        return value.detach()

    def _surrogates(
        self,
        td: TensorDictBase,
        action: torch.Tensor,
        old_log_prob: torch.Tensor,
        advantage: torch.Tensor,
        cost_advantage: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, Distribution]:
        """:math:`\\mathbb{E}[\\rho A_R]`, :math:`\\mathbb{E}[\\rho A_C]` and the current policy."""
        dist = self.actor.get_dist(td.clone(False))
        ratio = (dist.log_prob(action) - old_log_prob).exp()
        return (ratio * advantage).mean(), (ratio * cost_advantage).mean(), dist

    def step(
        self,
        td: TensorDictBase,
        episode_cost: torch.Tensor | float,
        episode_length: torch.Tensor | float | None = None,
    ) -> TensorDict:
        """Updates the actor on the flat batch ``td``; returns detached diagnostics.

        Args:
            td: batch with the input keys (any batch shape; flattened internally).
            episode_cost: mean episode cost :math:`J_C` of the data.
            episode_length: if given, :math:`c = (J_C - d) / \\text{episode\\_length}` (OmniSafe's
                per-step scaling, matching the per-sample cost surrogate); else
                :math:`c = J_C - d`.

        Returns:
            TensorDict of scalars: ``optim_case``, ``lambda_star``, ``nu_star``, ``q``, ``r``,
            ``s``, ``A``, ``B``, ``violation`` (:math:`c`), ``acceptance_step`` (0: rejected),
            ``step_norm``, ``kl``, ``surrogate_reward_improvement``, ``surrogate_cost_change``.
        """
        keys = self.tensor_keys
        td = td.reshape(-1)
        action = self._get(td, keys.action)
        old_log_prob = self._get(td, keys.sample_log_prob)
        advantage = self._get(td, keys.advantage)
        cost_advantage = self._get(td, keys.cost_advantage)
        if advantage.shape != cost_advantage.shape or advantage.shape[:-1] != old_log_prob.shape:
            raise ValueError(
                "expected advantage and cost_advantage of shape [*B, 1] and action_log_prob [*B]; "
                f"got {tuple(advantage.shape)}, {tuple(cost_advantage.shape)}, "
                f"{tuple(old_log_prob.shape)}"
            )
        if self.normalize_advantage:
            advantage, cost_advantage = normalize_advantages(advantage, cost_advantage)
        advantage, cost_advantage = advantage.squeeze(-1), cost_advantage.squeeze(-1)

        jc = torch.as_tensor(episode_cost, dtype=torch.float64)
        if jc.numel() == 0 or not bool(torch.isfinite(jc).all()):
            raise ValueError(f"episode_cost must be a non-empty finite value, got {episode_cost}")
        c = float(jc.mean()) - self.cost_limit
        if episode_length is not None:
            length = float(torch.as_tensor(episode_length, dtype=torch.float64).mean())
            if not length > 0:
                raise ValueError(f"episode_length must be > 0, got {episode_length}")
            c = c / (length + _EPS)

        params = _actor_params(self.actor)
        with torch.enable_grad():
            loss_r, loss_c, _ = self._surrogates(
                td, action, old_log_prob, advantage, cost_advantage
            )
            g = _flat_grad(loss_r, params, retain_graph=True)
            b = _flat_grad(loss_c, params)
        old_dist = _detached_dist(self.actor, td)
        fvp = make_fisher_vector_product(
            self.actor, td[:: self.fvp_sample_freq], damping=self.cg_damping
        )
        Hinv_g = conjugate_gradient(fvp, g, self.cg_iters)
        Hinv_b = conjugate_gradient(fvp, b, self.cg_iters)
        cpo = cpo_step_direction(g, b, c, Hinv_g, Hinv_b, self.target_kl)

        theta_old = torch.nn.utils.parameters_to_vector(params).detach().clone()
        loss_r_old, loss_c_old = float(loss_r.detach()), float(loss_c.detach())
        frac, accepted = 1.0, 0
        kl = improvement = cost_change = float("nan")
        for attempt in range(1, self.line_search_steps + 1):
            self._set_params(params, theta_old + frac * cpo.direction)
            with torch.no_grad():
                new_r, new_c, dist = self._surrogates(
                    td, action, old_log_prob, advantage, cost_advantage
                )
                kl = float(kl_divergence(old_dist, dist).mean())
            improvement, cost_change = float(new_r) - loss_r_old, float(new_c) - loss_c_old
            finite = all(math.isfinite(v) for v in (kl, improvement, cost_change))
            if (
                finite
                and (cpo.optim_case <= 1 or improvement >= 0)
                and cost_change <= max(-c, 0.0)
                and kl <= self.kl_tolerance * self.target_kl
            ):
                accepted = attempt
                break
            frac *= self.line_search_decay
        if not accepted:
            self._set_params(params, theta_old)
            frac, kl, improvement, cost_change = 0.0, 0.0, 0.0, 0.0

        step_norm = float(frac * cpo.direction.norm())
        return TensorDict(
            {
                "optim_case": float(cpo.optim_case),
                "lambda_star": cpo.lambda_star,
                "nu_star": cpo.nu_star,
                "q": cpo.q,
                "r": cpo.r,
                "s": cpo.s,
                "A": cpo.A,
                "B": cpo.B,
                "violation": c,
                "acceptance_step": float(accepted),
                "step_norm": step_norm,
                "kl": kl,
                "surrogate_reward_improvement": improvement,
                "surrogate_cost_change": cost_change,
            }
        ).float()

    @staticmethod
    def _set_params(params: list[torch.nn.Parameter], flat: torch.Tensor) -> None:
        with torch.no_grad():
            offset = 0
            for p in params:
                n = p.numel()
                p.copy_(flat[offset : offset + n].view_as(p))
                offset += n
