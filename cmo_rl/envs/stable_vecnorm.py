"""``StableVecNorm``: TorchRL's ``VecNormV2`` without NaNs on constant observation features.

``VecNormV2`` (torchrl 0.14.1) keeps running float32 moments ``loc = E[x]`` and
``var = E[x^2]`` and normalises with ``(x - loc) / sqrt(var - loc^2).clamp_min(eps)``. For a
feature that is (nearly) constant, ``E[x^2] - E[x]^2`` cancels to a tiny *negative* number in
float32, ``sqrt`` turns it into NaN and ``clamp_min`` keeps the NaN: the policy then emits NaN
actions. This happens on real tasks: column 43 of ``SafetyDoggoButton1-v0``'s observation sits
at ~1.0 for the first steps, so the very first batch of a Doggo run was NaN ("Nan, Inf or huge
value in CTRL ... The simulation is unstable" from MuJoCo, every update skipped).

The fix keeps the statistics consistent rather than patching the output: after each update the
second moment is raised to at least ``loc^2`` (``E[x^2] >= E[x]^2`` holds for exact moments), so
every reader (normalisation, ``loc``/``scale``, ``frozen_copy``, ``state_dict``) sees a
non-negative variance. State-dict keys are ``VecNormV2``'s, so checkpoints load either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchrl.envs import Transform
from torchrl.envs.transforms.vecnorm import VecNormV2

__all__ = ["StableVecNorm", "observation_norm"]

#: (regex) ``VecNormV2`` warns whenever it is parented to a batched env, naming its class;
#: pooling the statistics over the batch is what ``observation_norm`` asks for.
BATCHED_WARNING = r"Support of \w+ for containers with non-empty batch-size"


class StableVecNorm(VecNormV2):
    r"""``VecNormV2`` whose running second moment never falls below the squared mean.

    After every stateful update, per observation entry:
    :math:`\overline{x^2} \leftarrow \max(\overline{x^2}, \bar x^2)`, so
    :math:`\sigma^2 = \overline{x^2} - \bar x^2 \ge 0` and the output is finite for finite input
    (a constant feature maps to 0). Arguments are ``VecNormV2``'s.

    Examples:
        >>> from tensordict import TensorDict
        >>> def normalised(norm, rows):  # a feature at 1.0 with float32 jitter, like Doggo's
        ...     for x in rows:
        ...         td = TensorDict({"observation": torch.tensor(x)}, batch_size=[len(x)])
        ...         out = norm._step(td, td.clone())["observation"]
        ...     return out
        >>> rows = [[[1.0], [1.0]], [[0.99999994], [0.99999994]]]
        >>> normalised(VecNormV2(in_keys=["observation"], decay=1.0, reduce_batch_dims=True), rows)
        tensor([[nan],
                [nan]])
        >>> out = normalised(StableVecNorm(in_keys=["observation"], decay=1.0, reduce_batch_dims=True),
        ...                  rows)
        >>> bool(torch.isfinite(out).all()), bool(out.abs().max() < 1e-3)
        (True, True)
    """

    def _stateful_update(self, data) -> None:
        super()._stateful_update(data)
        if self.frozen or self._var is None:
            return
        # Only entries present in ``data`` were updated; clamping all is harmless (idempotent).
        self._var.apply_(lambda var, loc: torch.maximum(var, loc.pow(2)), self._loc)


def observation_norm(in_keys: Sequence[str]) -> Transform:
    r"""Running observation normalisation, pooled over the batch: TorchRL's ``VecNormV2``
    (as :class:`~cmo_rl.envs.stable_vecnorm.StableVecNorm`, which keeps the variance
    non-negative so near-constant features do not turn into NaN).

    With ``decay=1`` and ``reduce_batch_dims=True`` the statistics are the exact running mean
    and variance of every observation row seen (``count`` rows):

    .. math::

        \mu = \frac1{\text{count}}\sum x, \qquad
        \sigma^2 = \frac1{\text{count}}\sum x^2 - \mu^2, \qquad
        \hat x = \frac{x - \mu}{\max(\sigma, 10^{-4})}

    updated on every step and reset output (``freeze()`` stops the updates, e.g. for
    evaluation; ``state_dict()`` carries the statistics).

    Examples:
        >>> from torchrl.envs import TransformedEnv
        >>> from cmo_rl.testing import MockCMDPEnv
        >>> norm = observation_norm(["observation"])
        >>> env = TransformedEnv(MockCMDPEnv(num_envs=8, episode_length=50, seed=0), norm)
        >>> s = env.rollout(50)["next", "observation"][..., 0]  # raw s ~ U(-1, 1): std 0.58
        >>> type(norm).__name__, round(float(s.std()), 1)
        ('StableVecNorm', 1.0)
    """
    return StableVecNorm(in_keys=list(in_keys), decay=1.0, eps=1e-4, reduce_batch_dims=True)
