"""The shared on-policy update: advantages for reward and cost, minibatch epochs, learning rates.

Per epoch, on the ``[num_envs, T]`` batch of the collector:

1. :func:`compute_advantages` runs the reward and cost ``GAE`` (``advantage``,
   ``value_target``, ``cost_advantage``, ``cost_value_target``) and normalises over the whole
   batch like OmniSafe: :math:`A_R \\leftarrow (A_R - \\bar A_R)/\\sigma(A_R)`,
   :math:`A_C \\leftarrow A_C - \\bar A_C`;
2. :func:`minibatch_epochs` makes ``update_iters`` passes over the flattened batch in shuffled
   minibatches; each step minimises :math:`\\sum_k \\mathcal{L}_k` over the ``loss_*`` terms of the
   loss module, clips each parameter group's gradient norm, and after each pass stops early
   when :math:`\\widehat{KL} = \\mathbb{E}[(r - 1) - \\log r] >` ``target_kl``, with
   :math:`r = \\pi_\\theta(a|s) / \\pi_{old}(a|s)` (:func:`approx_kl`, never negative);
3. :func:`linear_lr` decays the actor's learning rate
   :math:`\\eta_e = \\eta_0 (1 - e / E)` over the ``E`` epochs of the run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from tensordict import TensorDictBase
from torch import nn

from cmo_rl.lifecycle.guard import NonFiniteGuard
from cmo_rl.objectives.lagrangian import normalize_advantages

__all__ = [
    "approx_kl",
    "compute_advantages",
    "linear_lr",
    "make_optimizer",
    "minibatch_epochs",
    "normalize_batch_advantages",
    "set_lr",
    "train_metrics",
]


def compute_advantages(
    batch: TensorDictBase,
    gae: Callable[[TensorDictBase], TensorDictBase],
    cost_gae: Callable[[TensorDictBase], TensorDictBase],
    *,
    normalize: bool = True,
) -> TensorDictBase:
    """Runs both GAE modules on ``batch`` (``[*B, T]``, time last) in place, without gradients.

    With ``normalize=True`` the advantages are replaced by
    :func:`~cmo_rl.objectives.normalize_advantages` over the whole batch (the value targets
    are left as they are).

    Examples:
        >>> from cmo_rl.envs.factory import make_env
        >>> from cmo_rl.modules import actor_critic_from_env
        >>> from cmo_rl.objectives import make_value_estimators
        >>> env = make_env("MockCMDP-v0", num_envs=2, seed=0, max_episode_steps=5)
        >>> actor, critic, cost_critic = actor_critic_from_env(env, hidden_layers=(8,))
        >>> batch = compute_advantages(env.rollout(5, actor), *make_value_estimators(critic, cost_critic))
        >>> [abs(float(batch[k].mean())) < 1e-6 for k in ("advantage", "cost_advantage")]
        [True, True]
    """
    with torch.no_grad():
        gae(batch)
        cost_gae(batch)
    return normalize_batch_advantages(batch) if normalize else batch


def normalize_batch_advantages(batch: TensorDictBase) -> TensorDictBase:
    """Replace ``batch``'s ``advantage`` and ``cost_advantage`` (in place) by
    :func:`~cmo_rl.objectives.normalize_advantages` over the whole batch.

    Examples:
        >>> from tensordict import TensorDict
        >>> td = TensorDict(advantage=torch.tensor([1.0, 3.0]), cost_advantage=torch.tensor([1.0, 3.0]))
        >>> normalize_batch_advantages(td)["cost_advantage"]  # centred, not scaled
        tensor([-1.,  1.])
    """
    advantage, cost_advantage = normalize_advantages(
        batch.get("advantage"), batch.get("cost_advantage")
    )
    batch.set("advantage", advantage)
    batch.set("cost_advantage", cost_advantage)
    return batch


def make_optimizer(
    groups: Mapping[str, nn.Module], lr: float, primal_rule: nn.Module | None = None
) -> torch.optim.Optimizer:
    """One Adam over named parameter groups (e.g. ``actor``, ``critic``, ``cost_critic``);
    with a ``primal_rule`` (:class:`~cmo_rl.objectives.learned_primal.LearnedPrimalRule`) a
    :class:`~cmo_rl.objectives.learned_primal.LearnedAdam` whose ``actor`` group takes the
    rule's step.

    Each group keeps its ``"name"``, so :func:`set_lr` can change one group's learning rate and
    :func:`minibatch_epochs` clips each group's gradient norm separately.

    Examples:
        >>> opt = make_optimizer({"actor": nn.Linear(2, 1), "critic": nn.Linear(2, 1)}, lr=3e-4)
        >>> [(g["name"], g["lr"]) for g in opt.param_groups]
        [('actor', 0.0003), ('critic', 0.0003)]
    """
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    param_groups = []
    for name, module in groups.items():
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"parameter group {name!r} has no trainable parameters")
        param_groups.append({"params": params, "lr": float(lr), "name": name})
    if primal_rule is not None:
        from cmo_rl.objectives.learned_primal import LearnedAdam

        return LearnedAdam(param_groups, primal_rule, lr=float(lr))
    return torch.optim.Adam(param_groups, lr=float(lr))


def set_lr(optimizer: torch.optim.Optimizer, lr: float, group: str | None = None) -> float:
    """Set the learning rate of the group named ``group`` (``None``: all groups); returns ``lr``.

    Examples:
        >>> opt = make_optimizer({"actor": nn.Linear(2, 1), "critic": nn.Linear(2, 1)}, lr=3e-4)
        >>> set_lr(opt, 1e-4, group="actor")
        0.0001
        >>> [(g["name"], g["lr"]) for g in opt.param_groups]
        [('actor', 0.0001), ('critic', 0.0003)]
    """
    found = False
    for param_group in optimizer.param_groups:
        if group is None or param_group.get("name") == group:
            param_group["lr"] = float(lr)
            found = True
    if not found:
        names = [g.get("name") for g in optimizer.param_groups]
        raise ValueError(f"no parameter group named {group!r}; groups: {names}")
    return float(lr)


def linear_lr(base_lr: float, epoch: int, num_epochs: int) -> float:
    """:math:`\\eta_0 (1 - e / E)`: ``base_lr`` at epoch 0, ``base_lr / E`` at the last epoch.

    Examples:
        >>> [linear_lr(1.0, e, 4) for e in range(4)]
        [1.0, 0.75, 0.5, 0.25]
    """
    if num_epochs < 1 or not 0 <= epoch < num_epochs:
        raise ValueError(
            f"need 0 <= epoch < num_epochs, got epoch={epoch}, num_epochs={num_epochs}"
        )
    return float(base_lr) * (1.0 - epoch / num_epochs)


def approx_kl(
    actor: nn.Module,
    batch: TensorDictBase,
    *,
    action_key: str = "action",
    log_prob_key: str = "action_log_prob",
) -> float:
    """Non-negative estimate of :math:`KL(\\pi_{old} \\| \\pi_\\theta)` on a whole batch.

    With :math:`r = \\pi_\\theta(a|s) / \\pi_{old}(a|s)` for the stored actions
    :math:`a \\sim \\pi_{old}`,

    .. math::

        \\widehat{KL} = \\mathbb{E}\\big[(r - 1) - \\log r\\big]

    (Schulman's "k3" estimator, http://joschu.net/blog/kl-approx.html). It is unbiased, like
    :math:`\\mathbb{E}[-\\log r]` (TorchRL's ``kl_approx``), since :math:`\\mathbb{E}[r] = 1`
    under :math:`\\pi_{old}`, but every term is :math:`\\ge 0` (as :math:`\\log r \\le r - 1`),
    so the estimate never goes negative (and, for nearby policies, varies less). It is the
    ``train/kl`` metric and the ``target_kl`` early-stop criterion of the recipes. :math:`r - 1`
    is computed as ``expm1(log r)``, which keeps each term exactly :math:`\\ge 0` in floating
    point.

    ``batch`` holds the collected ``action`` and its behaviour ``action_log_prob``; it is not
    modified.

    Examples:
        >>> from cmo_rl.envs.factory import make_env
        >>> from cmo_rl.modules import make_actor
        >>> env = make_env("MockCMDP-v0", num_envs=2, seed=0)
        >>> actor = make_actor(env, hidden_layers=(4,))
        >>> with torch.no_grad():
        ...     batch = env.rollout(3, actor)
        >>> approx_kl(actor, batch)  # the same policy: zero
        0.0
        >>> batch["action_log_prob"] = batch["action_log_prob"] + 0.25  # pi_old was likelier
        >>> round(approx_kl(actor, batch), 6)  # log r = -0.25 everywhere: e^-0.25 - 1 + 0.25
        0.028801
    """
    with torch.no_grad():
        dist = actor.get_dist(batch.clone(False))
        log_ratio = dist.log_prob(batch.get(action_key)) - batch.get(log_prob_key)
        return float((torch.expm1(log_ratio) - log_ratio).mean())


def _group_norms(
    optimizer: torch.optim.Optimizer, max_grad_norm: float | None
) -> dict[str, torch.Tensor]:
    """Pre-clip gradient norm of each parameter group, clipping each to ``max_grad_norm``."""
    norms = {}
    limit = float("inf") if max_grad_norm is None else float(max_grad_norm)
    for i, group in enumerate(optimizer.param_groups):
        params = [p for p in group["params"] if p.grad is not None]
        name = str(group.get("name", i))
        if params:
            norms[name] = nn.utils.clip_grad_norm_(params, limit)
    return norms


def minibatch_epochs(
    batch: TensorDictBase,
    loss_fn: Callable[[TensorDictBase], TensorDictBase],
    optimizer: torch.optim.Optimizer,
    *,
    update_iters: int,
    minibatch_size: int,
    guard: NonFiniteGuard,
    max_grad_norm: float | None = None,
    target_kl: float | None = None,
    kl_fn: Callable[[], float] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """``update_iters`` shuffled passes of minibatch gradient steps on a flat ``batch`` ``[N]``.

    Args:
        batch: the flat batch (``batch.reshape(-1)``), with every key ``loss_fn`` reads.
        loss_fn: minibatch -> TensorDict of ``loss_*`` terms (summed and minimised) and scalar
            diagnostics (averaged into the result), e.g. a
            :class:`~cmo_rl.objectives.LagrangianPPOLoss`.
        optimizer: optimizer over every parameter the losses train (:func:`make_optimizer`).
        update_iters: passes over the batch.
        minibatch_size: samples per step (the last minibatch of a pass may be smaller).
        guard: NaN/inf policy (a non-finite loss or gradient norm skips the step).
        max_grad_norm: clip each parameter group's gradient to this norm (``None``: no clip).
        target_kl: stop after the first pass whose ``kl_fn()`` exceeds it (``None``: never).
        kl_fn: ``() -> float``, e.g. ``lambda: approx_kl(actor, batch)``; evaluated after every
            pass when ``target_kl`` is set, and once at the end otherwise.
        generator: RNG of the shuffles (default: torch's global RNG).

    Returns:
        The mean of every ``loss_fn`` output over the applied steps, ``grad_norm`` (mean
        pre-clip norm of the ``actor`` group, else the first group), ``kl`` (last ``kl_fn``
        value, when given), ``update_passes`` and ``skipped_updates``.

    Examples:
        >>> layer = nn.Linear(1, 1, bias=False)
        >>> _ = nn.init.zeros_(layer.weight)
        >>> from tensordict import TensorDict
        >>> data = TensorDict(x=torch.ones(8, 1), y=torch.full((8, 1), 2.0), batch_size=[8])
        >>> def loss_fn(td):
        ...     return TensorDict(loss_mse=(layer(td["x"]) - td["y"]).pow(2).mean())
        >>> out = minibatch_epochs(data, loss_fn, torch.optim.SGD(layer.parameters(), lr=0.25),
        ...                        update_iters=2, minibatch_size=4, guard=NonFiniteGuard())
        >>> round(layer.weight.item(), 4), out["update_passes"], out["skipped_updates"]
        (1.875, 2, 0)
    """
    if batch.batch_dims != 1:
        raise ValueError(f"batch must be flat ([N]), got batch_size {tuple(batch.batch_size)}")
    if update_iters < 1 or minibatch_size < 1:
        raise ValueError(
            f"update_iters and minibatch_size must be >= 1, got {update_iters}, {minibatch_size}"
        )
    n = batch.shape[0]
    sums: dict[str, torch.Tensor] = {}
    grad_norm_sum = torch.zeros(())
    steps = passes = 0
    skipped_before = guard.skipped
    kl = None
    first_group = str(optimizer.param_groups[0].get("name", 0))
    names = {str(g.get("name", i)) for i, g in enumerate(optimizer.param_groups)}
    norm_group = "actor" if "actor" in names else first_group
    for _ in range(int(update_iters)):
        permutation = torch.randperm(n, generator=generator)
        for start in range(0, n, int(minibatch_size)):
            index = permutation[start : start + int(minibatch_size)].to(batch.device)
            out = loss_fn(batch[index])
            losses = {k: v for k, v in out.items() if k.startswith("loss_")}
            if not losses:
                raise ValueError(f"loss_fn returned no loss_* entry; keys: {list(out.keys())}")
            loss = sum(losses.values())
            if not guard.check(f"minibatch {steps} of pass {passes}", losses):
                continue
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norms = _group_norms(optimizer, max_grad_norm)
            if not guard.check(
                f"minibatch {steps} of pass {passes}",
                {f"grad_norm/{k}": v for k, v in norms.items()},
            ):
                optimizer.zero_grad(set_to_none=True)
                continue
            optimizer.step()
            steps += 1
            grad_norm_sum = grad_norm_sum + norms.get(norm_group, torch.zeros(())).detach().cpu()
            for key, value in out.items():
                if isinstance(value, torch.Tensor) and value.numel() == 1:
                    value = value.detach().float().reshape(()).cpu()
                    sums[key] = sums[key] + value if key in sums else value
        passes += 1
        if target_kl is not None and kl_fn is not None:
            kl = kl_fn()
            if kl > target_kl:
                break
    optimizer.zero_grad(set_to_none=True)
    if kl_fn is not None and target_kl is None:
        kl = kl_fn()
    result = {key: float(total) / steps for key, total in sums.items()} if steps else {}
    if steps:
        result["grad_norm"] = float(grad_norm_sum) / steps
    if kl is not None:
        result["kl"] = float(kl)
    result["update_passes"] = passes
    result["skipped_updates"] = guard.skipped - skipped_before
    return result


#: update output key -> metric name (``docs/metrics.md``); ``loss_*`` keys keep their name.
_TRAIN_METRICS = {
    "entropy": "train/entropy",
    "kl": "train/kl",
    "clip_fraction": "train/clip_fraction",
    "grad_norm": "train/grad_norm",
}


def train_metrics(update: Mapping[str, float]) -> dict[str, float]:
    """The documented ``train/...`` metrics of a :func:`minibatch_epochs` result.

    Examples:
        >>> train_metrics({"loss_objective": 0.1, "kl": 0.01, "ratio_mean": 1.0, "update_passes": 3})
        {'train/loss_objective': 0.1, 'train/kl': 0.01}
    """
    out = {}
    for key, value in update.items():
        if key.startswith("loss_"):
            out[f"train/{key}"] = value
        elif key in _TRAIN_METRICS:
            out[_TRAIN_METRICS[key]] = value
    return out
