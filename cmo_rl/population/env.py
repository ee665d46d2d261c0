r"""The learners' envs as one batched TorchRL env: batch ``[P, num_envs]``.

A population's learners each own an env (``num_envs`` sub-envs, their seeds, an observation
normaliser). Stepping them one after another pays TorchRL's per-step work (``step``,
``step_mdp``, the transforms) ``P`` times per step, ~0.7 ms each against a ~35 us
HalfCheetah physics step. :func:`population_env` puts the learners' base envs side by side in
one :class:`PopulationEnv` and the transforms around it once:

* ``RewardSum`` and ``StepCounter`` work elementwise, so one instance over ``[P, num_envs]``
  equals ``P`` of them;
* the observation normaliser keeps **per-learner** statistics:
  :class:`PopulationObservationNorm` updates learner ``p``'s running moments only from its own
  sub-envs' rows, with the arithmetic of :class:`~cmo_rl.envs.stable_vecnorm.StableVecNorm`
  (``decay=1``, batch dims pooled), on statistics *shared* with the learners' own norms (their
  ``loc``/``var``/``count`` become views of the stacked ones), so checkpoints, evaluation and
  resume read each learner's normaliser as in a single run.

Resets follow what each learner's own env would see: TorchRL resets a batched env when any of
its sub-envs is done and hands the transforms the whole reset batch, so a learner's normaliser
is updated with all its ``num_envs`` rows when one of *its* sub-envs resets, and not at all
when only other learners' sub-envs reset. Learner ``p``'s slice of every step is therefore its
own env's step, bit for bit (``tests/population/test_population_env.py``, with asynchronous
episode ends on ``SafetyHopperVelocity-v1``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import Compose, EnvBase, RewardSum, StepCounter, Transform, TransformedEnv
from torchrl.envs.transforms.vecnorm import VecNormV2

from cmo_rl.envs.safety import SafetyGymnasiumBatchEnv
from cmo_rl.envs.stable_vecnorm import StableVecNorm

__all__ = [
    "PopulationEnv",
    "PopulationObservationNorm",
    "batching_refusal",
    "population_env",
]


class PopulationEnv(EnvBase):
    """``P`` base envs of batch ``[num_envs]`` (one task) as one env of batch ``[P, num_envs]``.

    Learner ``p``'s slice of an input or output is what its own base env takes or returns.
    A partial reset (``"_reset"`` of shape ``[P, num_envs, 1]``) resets, per learner, only the
    flagged sub-envs, and only the base envs with a flagged sub-env are called; the others'
    rows of the reset output repeat their last observation (TorchRL keeps the carried values
    there anyway).

    Args:
        bases: the learners' base envs (same specs; ``batch_size == [num_envs]``). They are
            stepped through their ``_step``/``_reset``, so they must honour ``"_reset"``
            masks, as TorchRL's batched envs do.

    Examples:
        >>> from cmo_rl.testing import MockCMDPEnv
        >>> env = PopulationEnv([MockCMDPEnv(num_envs=2, episode_length=3, seed=s) for s in (0, 1)])
        >>> td = env.rollout(3)
        >>> tuple(td.batch_size), tuple(td["next", "cost"].shape)
        ((2, 2, 3), (2, 2, 3, 1))
    """

    def __init__(self, bases: Sequence[EnvBase]) -> None:
        bases = list(bases)
        if not bases:
            raise ValueError("PopulationEnv needs at least one base env")
        first = bases[0]
        if first.batch_dims != 1:
            raise ValueError(f"base envs must have one batch dim, got {tuple(first.batch_size)}")
        for base in bases[1:]:
            if base.batch_size != first.batch_size or base.full_observation_spec != (
                first.full_observation_spec
            ):
                raise ValueError("the base envs of a population must have the same specs")
        super().__init__(
            batch_size=torch.Size([len(bases), *first.batch_size]), device=first.device
        )
        self.bases = bases
        size = len(bases)
        self.observation_spec = first.full_observation_spec.expand(size, *first.batch_size)
        self.action_spec = first.full_action_spec.expand(size, *first.batch_size)
        self.reward_spec = first.full_reward_spec.expand(size, *first.batch_size)
        self.done_spec = first.full_done_spec.expand(size, *first.batch_size)
        self._observation_keys = list(first.full_observation_spec.keys(True, True))
        self._last_observation: TensorDictBase | None = None
        #: Safety-Gymnasium bases: one env over all their sub-envs (one batched fast stepper)
        self.flat: SafetyGymnasiumBatchEnv | None = None
        if all(isinstance(base, SafetyGymnasiumBatchEnv) for base in bases):
            self.flat = SafetyGymnasiumBatchEnv.concatenate(bases)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        if self.flat is not None:
            action = tensordict.get("action")
            flat_input = TensorDict(
                {"action": action.flatten(0, 1)}, batch_size=self.flat.batch_size
            )
            return self.flat._step(flat_input).reshape(self.batch_size)
        parts = [base._step(part) for base, part in zip(self.bases, tensordict.unbind(0))]
        out = torch.stack(parts)
        self._last_observation = out.select(*self._observation_keys)
        return out

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        mask = None if tensordict is None else tensordict.get("_reset", None)
        if self.flat is not None:  # its reset returns every row (current ones where not reset)
            flags = None
            if mask is not None:
                flags = TensorDict({"_reset": mask.reshape(-1, 1)}, batch_size=self.flat.batch_size)
            return self.flat._reset(flags).reshape(self.batch_size)
        parts = []
        for p, base in enumerate(self.bases):
            if mask is None or self._last_observation is None:
                parts.append(base._reset(None))
            elif bool(mask[p].any()):
                flags = TensorDict({"_reset": mask[p]}, batch_size=base.batch_size)
                parts.append(base._reset(flags))
            else:  # nothing of learner p resets: its rows are discarded by TorchRL
                idle = self._last_observation[p].clone()
                false = torch.zeros((*base.batch_size, 1), dtype=torch.bool, device=self.device)
                idle.update({"done": false, "terminated": false.clone(), "truncated": false})
                parts.append(idle)
        out = torch.stack(parts)
        self._last_observation = out.select(*self._observation_keys)
        return out

    def _step_proc_data(self, next_tensordict_out: TensorDictBase) -> TensorDictBase:
        # every base already returns each key with its spec shape (see the base envs)
        if self.run_type_checks:
            return super()._step_proc_data(next_tensordict_out)
        return next_tensordict_out

    def _set_seed(self, seed: int | None) -> None:
        """Learner ``p``'s base env gets ``seed + p * num_envs`` (as one flat batch would)."""
        step = self.batch_size[1]
        self.set_seeds(
            [None if seed is None else int(seed) + p * step for p in range(len(self.bases))]
        )

    def set_seeds(self, seeds: Sequence[int | None]) -> None:
        """Seed learner ``p``'s base env with ``seeds[p]`` (its ``set_seed(seeds[p],
        static_seed=True)``: for Safety-Gymnasium, sub-env ``j`` gets ``seeds[p] + j``)."""
        if len(seeds) != len(self.bases):
            raise ValueError(f"{len(seeds)} seeds for {len(self.bases)} learners")
        if self.flat is not None:
            n = self.batch_size[1]
            self.flat.seed_sub_envs(
                [None if seed is None else int(seed) + j for seed in seeds for j in range(n)]
            )
            return
        for base, seed in zip(self.bases, seeds):
            base.set_seed(seed, static_seed=True)


class PopulationObservationNorm(Transform):
    r"""Per-learner running observation normalisation over a ``[P, num_envs]`` batch.

    Learner ``p``'s statistics are those of its own
    :class:`~cmo_rl.envs.stable_vecnorm.StableVecNorm` (``norms[p]``): at every full reset
    they are stacked into ``[P, ...]`` tensors and the learners' norms are pointed at views of
    them, so updates here are the learners' updates (a checkpoint, an evaluation sync or a
    ``load_state_dict`` between full resets works on the learners' norms as usual). Per step,
    with ``x`` learner ``p``'s ``[num_envs, d]`` rows and ``c`` its row count:

    .. math::

        c \leftarrow c + n, \quad
        \mu \leftarrow \operatorname{lerp}(\mu, \bar x, n / c), \quad
        \overline{x^2} \leftarrow \max(\operatorname{lerp}(\overline{x^2}, \overline{x^2_{new}},
        n / c), \mu^2), \quad
        \hat x = \frac{x - \mu}{\max(\sqrt{\overline{x^2} - \mu^2}, \epsilon)}

    the operations of ``VecNormV2`` with ``decay=1`` and ``reduce_batch_dims=True``.

    Args:
        norms: the learners' normalisers (``StableVecNorm`` as
            :func:`cmo_rl.envs.observation_norm` builds them; same ``in_keys``), initialised.

    Examples:
        >>> from cmo_rl.envs import observation_norm
        >>> from cmo_rl.testing import MockCMDPEnv
        >>> singles = [TransformedEnv(MockCMDPEnv(num_envs=2, seed=s), observation_norm(["observation"]))
        ...            for s in (0, 1)]
        >>> for env in singles:
        ...     _ = env.reset()
        >>> norms = [env.transform for env in singles]
        >>> env = TransformedEnv(PopulationEnv([env.base_env for env in singles]),
        ...                      PopulationObservationNorm(norms))
        >>> _ = env.rollout(4)
        >>> [int(norm._count["observation"]) for norm in norms]  # 2 resets + 4 steps, 2 rows each
        [12, 12]
    """

    def __init__(self, norms: Sequence[VecNormV2]) -> None:
        norms = list(norms)
        reason = _norm_refusal(norms)
        if reason is not None:
            raise ValueError(f"PopulationObservationNorm: {reason}")
        keys = list(norms[0].in_keys)
        super().__init__(in_keys=keys, out_keys=keys)
        self.norms = norms
        self.eps = float(norms[0].eps)
        self._stats: dict[str, TensorDictBase] | None = None

    def _tie(self) -> None:
        """Stack the learners' statistics and point their norms at views of the stack."""
        if self._stats is not None and all(
            norm._loc is self._views[p][0] for p, norm in enumerate(self.norms)
        ):
            return
        stats = {
            name: torch.stack([getattr(norm, f"_{name}") for norm in self.norms])
            for name in ("loc", "var", "count")
        }
        self._views = []
        for p, norm in enumerate(self.norms):
            norm._loc, norm._var, norm._count = (stats[n][p] for n in ("loc", "var", "count"))
            self._views.append((norm._loc, norm._var, norm._count))
        self._stats = stats

    def _update_and_normalise(
        self, data: TensorDictBase, learners: torch.Tensor | None
    ) -> TensorDictBase:
        """Update the statistics of ``learners`` (all when ``None``) from their rows of
        ``data`` (``[P, num_envs]``), then normalise every row with its learner's statistics."""
        self._tie()
        loc_all, var_all, count_all = (self._stats[n] for n in ("loc", "var", "count"))
        out = {}
        for key in self.in_keys:
            x = data.get(key)
            loc, var, count = loc_all.get(key), var_all.get(key), count_all.get(key)
            rows = x.shape[1]
            if learners is None:
                count += rows
                weight = (rows / count).reshape(-1, *[1] * (loc.dim() - 1))
                loc.lerp_(x.mean(dim=1), weight)
                var.lerp_(x.pow(2).mean(dim=1), weight)
                torch.maximum(var, loc.pow(2), out=var)
            elif len(learners):
                sub_x, sub_count = x[learners], count[learners] + rows
                weight = (rows / sub_count).reshape(-1, *[1] * (loc.dim() - 1))
                sub_loc = loc[learners].lerp_(sub_x.mean(dim=1), weight)
                sub_var = var[learners].lerp_(sub_x.pow(2).mean(dim=1), weight)
                count[learners] = sub_count
                loc[learners] = sub_loc
                var[learners] = torch.maximum(sub_var, sub_loc.pow(2))
            scale = (var - loc.pow(2)).sqrt().clamp_min(self.eps)
            out[key] = (x - loc.unsqueeze(1)) / scale.unsqueeze(1)
        return data.update(out)

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        return self._update_and_normalise(next_tensordict, None)

    def _reset(
        self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase
    ) -> TensorDictBase:
        mask = None if tensordict is None else tensordict.get("_reset", None)
        if mask is None:
            self._stats = None  # a full reset re-reads the learners' statistics
            return self._update_and_normalise(tensordict_reset, None)
        learners = mask.reshape(mask.shape[0], -1).any(-1).nonzero().squeeze(-1)
        return self._update_and_normalise(tensordict_reset, learners)


def _norm_refusal(norms: Sequence[Transform]) -> str | None:
    if not norms:
        return "no learners"
    for norm in norms:
        if not isinstance(norm, StableVecNorm):
            return f"expected StableVecNorm (observation_norm), got {type(norm).__name__}"
        if norm.decay != 1.0 or not norm.reduce_batch_dims or not norm.stateful:
            return "only decay=1, reduce_batch_dims=True, stateful norms are batched"
        if list(norm.in_keys) != list(norm.out_keys[: len(norm.in_keys)]):
            return "only in-place normalisation (out_keys == in_keys) is batched"
        if norm._loc is None:
            return "the learners' norms must be initialised (reset their envs once)"
        if list(norm.in_keys) != list(norms[0].in_keys) or norm.eps != norms[0].eps:
            return "the learners' norms differ in keys or eps"
    return None


_ELEMENTWISE = (RewardSum, StepCounter)


def _transforms(env: TransformedEnv) -> list[Transform]:
    transform = env.transform
    return list(transform) if isinstance(transform, Compose) else [transform]


def batching_refusal(envs: Sequence[TransformedEnv]) -> str | None:
    """Why the learners' ``envs`` cannot be stepped as one :func:`population_env` (``None``:
    they can): each must be a ``TransformedEnv`` of ``RewardSum``/``StepCounter`` transforms and
    at most one observation norm, the same chain for every learner.

    Examples:
        >>> from cmo_rl.envs.factory import make_env
        >>> print(batching_refusal([make_env("MockCMDP-v0", 2, seed=s) for s in (0, 1)]))
        None
    """
    if not envs:
        return "no learners"
    chains = []
    for env in envs:
        if not isinstance(env, TransformedEnv):
            return f"expected TransformedEnv learners, got {type(env).__name__}"
        chain = [type(t) for t in _transforms(env)]
        if any(not issubclass(t, (*_ELEMENTWISE, VecNormV2)) for t in chain):
            return f"transforms {[t.__name__ for t in chain]} are not all batchable"
        chains.append(chain)
    if any(chain != chains[0] for chain in chains):
        return "the learners' envs have different transform chains"
    norms = [t for env in envs for t in _transforms(env) if isinstance(t, VecNormV2)]
    if norms:
        if chains[0][-1] is not type(norms[0]) or len(norms) != len(envs):
            return "the observation norm must be the last transform, once per learner"
        return _norm_refusal(norms)
    return None


def population_env(envs: Sequence[TransformedEnv]) -> TransformedEnv:
    """The learners' ``envs`` (as :func:`cmo_rl.envs.factory.make_env` builds them, each reset
    once) as one ``TransformedEnv`` of batch ``[P, num_envs]``: their base envs in a
    :class:`PopulationEnv`, fresh copies of their elementwise transforms, and a
    :class:`PopulationObservationNorm` over their normalisers. ``ValueError`` when
    :func:`batching_refusal` names a reason.

    Examples:
        >>> from cmo_rl.envs.factory import make_env
        >>> envs = [make_env("MockCMDP-v0", 2, seed=s, normalize_observations=True) for s in (0, 1)]
        >>> for env in envs:
        ...     _ = env.reset()
        >>> batched = population_env(envs)
        >>> td = batched.rollout(3)
        >>> tuple(td.batch_size), sorted(td["next"].keys())[:3]
        ((2, 2, 3), ['cost', 'done', 'episode_cost'])
    """
    reason = batching_refusal(envs)
    if reason is not None:
        raise ValueError(f"the learners' envs cannot be batched: {reason}")
    transforms = []
    for transform in _transforms(envs[0]):
        if isinstance(transform, VecNormV2):
            transforms.append(
                PopulationObservationNorm(
                    [t for env in envs for t in _transforms(env) if isinstance(t, VecNormV2)]
                )
            )
        else:
            transforms.append(transform.clone())
    return TransformedEnv(PopulationEnv([env.base_env for env in envs]), Compose(*transforms))
