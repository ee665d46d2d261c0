"""The PPO / PPO-Lag / PID-Lag update of a whole population: one vmapped minibatch step.

:class:`PopulationPPO` is :func:`cmo_rl.training.onpolicy.minibatch_epochs` with
:class:`~cmo_rl.objectives.LagrangianPPOLoss` and ``make_optimizer``'s Adam, run for ``P``
learners at once. Each learner has its own parameters, Adam state, learning rates, batch, RNG
(its own shuffle of its batch each pass), multiplier :math:`\\lambda` and KL budget. Per pass:

1. every learner still running draws its permutation of ``0..N-1`` from its own generator
   (a stopped learner draws none, as if it had left the loop);
2. per minibatch, one compiled-or-eager step: gather each learner's rows, one
   ``torch.func.vmap`` of ``torch.func.grad`` of
   :func:`~cmo_rl.population.loss.lagrangian_ppo_loss` (:math:`\\lambda = 0` is plain PPO),
   per-network norm clipping (:func:`~cmo_rl.population.adam.clip_group_norms`), a
   non-finite check per learner (the guard: the learner skips that step) and the masked
   optimizer step (:meth:`~cmo_rl.population.adam.StackedAdam.apply`, or
   the learned primal rules' :class:`~cmo_rl.population.learned_adam.StackedLearnedAdam`),
   metrics summed per learner;
3. after the pass, the approximate KL of each running learner on its whole batch
   (:func:`~cmo_rl.population.loss.approx_kl_of`, the non-negative k3 estimator); a learner
   whose KL exceeds its ``target_kl`` stops: no later pass touches its parameters, Adam state
   or RNG, exactly as if it had run alone. When learners have stopped, the later passes run
   only the others (``compact=True``, eager) or all with the stopped ones masked out
   (``compact=False``, the default when compiled: the shapes stay fixed).

Returns one dict per learner with the keys of ``minibatch_epochs``' result (feed each to
:func:`~cmo_rl.training.onpolicy.train_metrics`). ``tests/population/test_population_update.py``
compares a population with separate single-learner runs.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor

from cmo_rl.lifecycle.guard import NAN_POLICIES, NonFiniteError
from cmo_rl.objectives.learned_primal import LearnedPrimalRule
from cmo_rl.population.adam import StackedAdam, clip_group_norms
from cmo_rl.population.compiling import CompiledOrEager
from cmo_rl.population.learned_adam import StackedLearnedAdam
from cmo_rl.population.learners import LearnerNets
from cmo_rl.population.loss import LOSS_KEYS, LossCoefficients, approx_kl_of, lagrangian_ppo_loss

__all__ = ["BATCH_KEYS", "PopulationPPO"]

#: the batch entries the update reads (``[P, N, ...]``)
BATCH_KEYS = (
    "observation",
    "action",
    "action_log_prob",
    "advantage",
    "cost_advantage",
    "value_target",
    "cost_value_target",
)


def _take(tree: Any, index: Tensor) -> Any:
    """Rows ``index`` of every tensor of a nested dict."""
    if isinstance(tree, Mapping):
        return {k: _take(v, index) for k, v in tree.items()}
    return tree.index_select(0, index)


def _put(tree: Any, index: Tensor, sub: Any) -> Any:
    """A copy of ``tree`` with rows ``index`` replaced by ``sub``."""
    if isinstance(tree, Mapping):
        return {k: _put(v, index, sub[k]) for k, v in tree.items()}
    return tree.index_copy(0, index, sub)


class PopulationPPO:
    """Vectorised PPO-Lagrangian update of ``P`` learners (see the module docstring).

    Args:
        nets: the learners' architecture (:meth:`LearnerNets.from_agent` of any one agent).
        coeffs: loss constants (:meth:`LossCoefficients.make`).
        update_iters: passes over each batch.
        minibatch_size: samples per step (the last minibatch of a pass may be smaller).
        max_grad_norm: clip each network's gradient norm to this (``None``: no clip).
        nan_policy: ``"skip"`` (a learner's non-finite step is not applied, and counted) or
            ``"raise"`` (:class:`~cmo_rl.lifecycle.guard.NonFiniteError`).
        compile: ``torch.compile`` the minibatch step (``dynamic=False``: one graph per
            minibatch shape, i.e. two when ``N`` is not a multiple of ``minibatch_size``); if
            compiling fails, warns and runs eagerly. Dynamo caches per code object, so many
            engines or population sizes in one process can reach its ``recompile_limit`` (it
            then runs eagerly): ``torch._dynamo.reset()`` between them.
        compact: run later passes on the running learners only (default: ``not compile``).
        all_diagnostics: every diagnostic of ``LagrangianPPOLoss`` in the result (else those
            ``train_metrics`` reads: entropy, kl_approx, clip_fraction, ratio_mean,
            lagrange_multiplier, and the losses).
        vectorize: ``torch.func.vmap`` over the learners (the point of this class); ``False``
            computes the gradients learner after learner (slower, but the same kernels as a
            single learner's, so bit for bit equal to separate runs: a reference for tests).
            The vmapped path differs from it in the last bits: a batched matmul with one
            output column (the critics' last layer) sums in another order than the
            single-learner ``addmm``, which BLAS runs as a matrix-vector product.

    Examples:
        >>> from cmo_rl.envs.factory import make_env
        >>> from cmo_rl.modules import actor_critic_from_env
        >>> from cmo_rl.population.learners import stack_learners
        >>> env = make_env("MockCMDP-v0", num_envs=2)
        >>> agents = [actor_critic_from_env(env, hidden_layers=(8,)) for _ in range(3)]
        >>> engine = PopulationPPO(LearnerNets.from_agent(agents[0]), LossCoefficients.make(),
        ...                        update_iters=2, minibatch_size=4, max_grad_norm=40.0)
        >>> params = stack_learners(agents)
        >>> adam = engine.make_optimizer(params, lr=3e-4)
        >>> obs = torch.randn(3, 10, 2)
        >>> with torch.no_grad():
        ...     dist = engine.nets.dist(engine.nets.flat_params(params[0])["actor"], obs)
        ...     action = dist.sample()
        >>> batch = TensorDict(observation=obs, action=action, action_log_prob=dist.log_prob(action),
        ...     advantage=torch.randn(3, 10, 1), cost_advantage=torch.randn(3, 10, 1),
        ...     value_target=torch.randn(3, 10, 1), cost_value_target=torch.randn(3, 10, 1),
        ...     batch_size=[3, 10])
        >>> params, results = engine.update(params, adam, batch, multiplier=torch.zeros(3),
        ...                                 target_kl=torch.tensor([0.0, 1.0, 1.0]))
        >>> [r["update_passes"] for r in results], adam.step.tolist()  # learner 0 stops at once
        ([1, 2, 2], [3.0, 6.0, 6.0])
    """

    def __init__(
        self,
        nets: LearnerNets,
        coeffs: LossCoefficients,
        *,
        update_iters: int,
        minibatch_size: int,
        max_grad_norm: float | None = None,
        nan_policy: str = "skip",
        compile: bool = False,
        compact: bool | None = None,
        all_diagnostics: bool = False,
        vectorize: bool = True,
    ) -> None:
        if update_iters < 1 or minibatch_size < 1:
            raise ValueError(
                f"update_iters and minibatch_size must be >= 1, got {update_iters}, {minibatch_size}"
            )
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {list(NAN_POLICIES)}, got {nan_policy!r}")
        self.nets = nets
        self.coeffs = coeffs
        self.update_iters = int(update_iters)
        self.minibatch_size = int(minibatch_size)
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.nan_policy = nan_policy
        self.compact = (not compile) if compact is None else bool(compact)
        self.all_diagnostics = bool(all_diagnostics)
        loss = functools.partial(
            lagrangian_ppo_loss, nets, coeffs=coeffs, all_diagnostics=self.all_diagnostics
        )
        grad = torch.func.grad(loss, has_aux=True)
        if vectorize:
            self._grad = torch.func.vmap(grad, in_dims=(0, 0, 0), randomness="different")
        else:
            self._grad = functools.partial(_looped, grad)
        kl = functools.partial(approx_kl_of, nets)
        self._kl = torch.func.vmap(kl) if vectorize else functools.partial(_looped_kl, kl)
        self._step_fn = CompiledOrEager(self._step, what="the population step", compile=compile)

    # ------------------------------------------------------------------------------ state
    def make_optimizer(
        self,
        params: TensorDictBase,
        lr: float | Tensor,
        primal_rules: Sequence[LearnedPrimalRule] | None = None,
    ) -> StackedAdam:
        """A fresh :class:`~cmo_rl.population.adam.StackedAdam` for ``params`` ``[P]``; with
        ``primal_rules`` (one per learner) a
        :class:`~cmo_rl.population.learned_adam.StackedLearnedAdam` whose ``actor`` group
        takes the rules' steps."""
        flat = self.nets.flat_params(params)
        if primal_rules is None:
            return StackedAdam(flat, lr)
        return StackedLearnedAdam(flat, lr, primal_rules)

    # ----------------------------------------------------------------------- one minibatch
    def _step(
        self,
        apply: Any,
        params: dict,
        opt: dict,
        constants: dict,
        data: dict,
        index: Tensor,
        multiplier: Tensor,
        live: Tensor,
        sums: dict,
    ) -> tuple:
        """Gather, vmapped gradient, clip, guard, masked optimizer step (``apply``: the
        optimizer's pure step), metric sums (pure)."""
        rows = torch.arange(index.shape[0], device=index.device).unsqueeze(1)
        minibatch = {key: value[rows, index] for key, value in data.items()}
        grads, out = self._grad(params, minibatch, multiplier)
        grads, norms = clip_group_norms(grads, self.max_grad_norm)
        finite = torch.ones_like(live)
        for value in [*(out[k] for k in LOSS_KEYS), *norms.values()]:
            finite = finite & torch.isfinite(value)
        applied = live & finite
        params, opt = apply(params, grads, opt, constants, applied, multiplier)
        zero = torch.zeros((), dtype=torch.float32, device=live.device)
        new_sums = {
            key: sums[key] + torch.where(applied, value.float(), zero) for key, value in out.items()
        }
        norm = norms["actor"] if "actor" in norms else next(iter(norms.values()))
        new_sums["grad_norm"] = sums["grad_norm"] + torch.where(applied, norm, zero)
        new_sums["steps"] = sums["steps"] + applied.long()
        new_sums["skipped"] = sums["skipped"] + (live & ~finite).long()
        return params, opt, new_sums, finite

    # ------------------------------------------------------------------------- the update
    def update(
        self,
        params: TensorDictBase,
        optimizer: StackedAdam,
        batch: TensorDictBase | Mapping[str, Tensor],
        multiplier: Tensor,
        *,
        target_kl: float | Tensor | None = None,
        generators: Sequence[torch.Generator] | None = None,
    ) -> tuple[TensorDict, list[dict[str, float]]]:
        """``update_iters`` passes for every learner; returns ``(new params, results)``.

        Args:
            params: stacked parameters ``[P]`` (:func:`stack_learners`); not modified.
            optimizer: the learners' Adam state, updated in place.
            batch: ``[P, N]`` (or a mapping of ``[P, N, ...]`` tensors) with
                :data:`BATCH_KEYS`; a batch shared by all learners: ``batch.expand(P, N)``.
            multiplier: :math:`\\lambda` per learner, ``[P]`` (zeros: plain PPO).
            target_kl: stop a learner after the first pass whose KL exceeds it: a float, a
                ``[P]`` tensor, or ``None`` (never; the KL is then measured once at the end).
            generators: one ``torch.Generator`` per learner for its shuffles (``None``: the
                global RNG, learner after learner).

        Returns:
            The new parameters ``[P]`` and, per learner, the dict ``minibatch_epochs``
            returns (means of the loss outputs over its applied steps, ``grad_norm``, ``kl``,
            ``update_passes``, ``skipped_updates``).
        """
        flat = self.nets.flat_params(params)
        size = int(params.batch_size[0])
        data = {key: batch[key] for key in BATCH_KEYS}
        n = int(data["observation"].shape[1])
        device = data["observation"].device
        if any(v.shape[:2] != (size, n) for v in data.values()):
            raise ValueError(f"every batch entry must be [P={size}, N={n}, ...]")
        if generators is not None and len(generators) != size:
            raise ValueError(f"{len(generators)} generators for {size} learners")
        multiplier = torch.as_tensor(multiplier, dtype=torch.float32, device=device)
        multiplier = multiplier.expand(size) if multiplier.dim() == 0 else multiplier
        if bool((multiplier < 0).any()):
            raise ValueError("lagrange multipliers must be >= 0")
        if target_kl is not None:
            target_kl = torch.as_tensor(target_kl, dtype=torch.float64).expand(size).tolist()
        state = {
            "params": flat,
            "opt": optimizer.trained_state(),
            "constants": optimizer.constants(),
            "data": data,
            "multiplier": multiplier,
        }
        apply = optimizer.apply
        zeros = torch.zeros(size, dtype=torch.float32, device=device)
        counts = torch.zeros(size, dtype=torch.long, device=device)
        sums: dict[str, Tensor] = {"grad_norm": zeros, "steps": counts, "skipped": counts}
        sums.update({key: zeros for key in self._output_keys(state)})
        running = [True] * size
        passes = [0] * size
        kl: list[float | None] = [None] * size
        for _ in range(self.update_iters):
            members = [p for p in range(size) if running[p]]
            if not members:
                break
            sub = state
            chosen = torch.tensor(members, device=device)
            if self.compact and len(members) < size:
                sub = _take(state, chosen)
                sub_sums = _take(sums, chosen)
                live = torch.ones(len(members), dtype=torch.bool, device=device)
                rows = members
            else:
                sub_sums = sums
                live = torch.tensor(running, device=device)
                rows = list(range(size))
            perms = torch.stack(
                [
                    torch.randperm(n, generator=None if generators is None else generators[p])
                    if running[p]
                    else torch.arange(n)
                    for p in rows
                ]
            ).to(device)
            sub_sums = self._pass(apply, sub, sub_sums, perms, live, n)
            if sub is not state:
                state = {**state, **_put(_trained(state), chosen, _trained(sub))}
                sums = _put(sums, chosen, sub_sums)
            else:
                state, sums = sub, sub_sums
            for p in members:
                passes[p] += 1
            if target_kl is not None:
                values = self._measure_kl(state, chosen)
                for p, value in zip(members, values):
                    kl[p] = value
                    if value > target_kl[p]:
                        running[p] = False
        if target_kl is None:
            for p, value in enumerate(self._measure_kl(state, torch.arange(size, device=device))):
                kl[p] = value
        optimizer.load_trained_state(state["opt"])
        new_params = self.nets.nested_params(state["params"], params.batch_size[:1])
        return new_params, self._results(sums, kl, passes)

    def _pass(
        self, apply: Any, state: dict, sums: dict, perms: Tensor, live: Tensor, n: int
    ) -> dict:
        """One pass over the batch in minibatches; updates ``state`` in place, returns sums."""
        for start in range(0, n, self.minibatch_size):
            index = perms[:, start : start + self.minibatch_size]
            params, opt, sums, finite = self._step_fn(
                apply, state["params"], state["opt"], state["constants"], state["data"], index,
                state["multiplier"], live, sums,
            )  # fmt: skip
            state.update(params=params, opt=opt)
            if self.nan_policy == "raise" and not bool((finite | ~live).all()):
                bad = (~finite & live).nonzero().flatten().tolist()
                raise NonFiniteError(
                    f"non-finite loss or gradient norm of learners {bad} in minibatch "
                    f"{start // self.minibatch_size} (nan_policy=raise)"
                )
        return sums

    def _output_keys(self, state: dict) -> list[str]:
        """The keys of the loss outputs (from a one-sample evaluation of the first learner)."""
        one = {key: value[:1, :1] for key, value in state["data"].items()}
        params = _take(
            state["params"], torch.zeros(1, dtype=torch.long, device=one["action"].device)
        )
        with torch.no_grad():
            _, out = torch.func.vmap(
                functools.partial(
                    lagrangian_ppo_loss,
                    self.nets,
                    coeffs=self.coeffs,
                    all_diagnostics=self.all_diagnostics,
                ),
                randomness="different",
            )(params, one, state["multiplier"][:1])
        return list(out)

    def _measure_kl(self, state: dict, chosen: Tensor) -> list[float]:
        data = _take(state["data"], chosen)
        actor = _take(state["params"]["actor"], chosen)
        values = self._kl(actor, data["observation"], data["action"], data["action_log_prob"])
        return [float(v) for v in values]

    @staticmethod
    def _results(sums: dict, kl: list, passes: list[int]) -> list[dict[str, float]]:
        steps = sums["steps"].tolist()
        results = []
        for p, count in enumerate(steps):
            result: dict[str, float] = {}
            if count:
                for key, total in sums.items():
                    if key not in ("steps", "skipped", "grad_norm"):
                        result[key] = float(total[p]) / count
                result["grad_norm"] = float(sums["grad_norm"][p]) / count
            if kl[p] is not None:
                result["kl"] = float(kl[p])
            result["update_passes"] = passes[p]
            result["skipped_updates"] = int(sums["skipped"][p])
            results.append(result)
        return results


def _looped(grad: Any, params: dict, minibatch: dict, multiplier: Tensor) -> tuple[dict, dict]:
    """``vmap(grad)`` computed learner by learner (the single-learner kernels), stacked."""
    outs = [
        grad(_take_one(params, p), _take_one(minibatch, p), multiplier[p])
        for p in range(multiplier.shape[0])
    ]
    return _stack([o[0] for o in outs]), _stack([o[1] for o in outs])


def _looped_kl(kl: Any, actor: dict, *tensors: Tensor) -> Tensor:
    """``vmap(kl)`` learner by learner."""
    size = tensors[0].shape[0]
    return torch.stack([kl(_take_one(actor, p), *(t[p] for t in tensors)) for p in range(size)])


def _take_one(tree: Any, p: int) -> Any:
    if isinstance(tree, Mapping):
        return {k: _take_one(v, p) for k, v in tree.items()}
    return tree[p]


def _stack(trees: list) -> Any:
    if isinstance(trees[0], Mapping):
        return {k: _stack([t[k] for t in trees]) for k in trees[0]}
    return torch.stack(trees)


def _trained(state: dict) -> dict:
    """The entries of the update state that a pass changes (compaction scatters them back)."""
    return {key: state[key] for key in ("params", "opt")}
