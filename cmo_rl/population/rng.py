"""One set of global RNG streams per learner, so that each learner draws what it would alone.

A single-seed recipe draws everything random from the process-global generators (Python
``random``, NumPy's legacy global RNG, torch's default generator): parameter initialisation,
action sampling in the collector, the minibatch shuffles. A population keeps, per learner, the
state those generators would have in that learner's own run, and swaps it in around the
learner's draws (:meth:`LearnerRNG.activate`); torch's minibatch shuffles take the learner's
torch state through a ``torch.Generator`` (:meth:`LearnerRNG.generators`). Swapping costs two
state copies (a few microseconds) per learner and use.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from cmo_rl.lifecycle.checkpoint import capture_rng_state, restore_rng_state
from cmo_rl.seeding import seed_everything

__all__ = ["LearnerRNG"]


class LearnerRNG:
    """The global RNG states of ``P`` learners, each seeded as its own run would be.

    Args:
        seeds: one seed per learner (:func:`cmo_rl.seeding.seed_everything` of each).

    Examples:
        >>> rng = LearnerRNG([0, 1, 0])
        >>> draws = []
        >>> for p in range(3):
        ...     with rng.activate(p):
        ...         draws.append(torch.rand(1).item())
        >>> draws[0] == draws[2] != draws[1]  # seed 0 twice: the same stream
        True
        >>> with rng.activate(0):  # learner 0 continues its own stream
        ...     nxt = torch.rand(1).item()
        >>> _ = torch.manual_seed(0); torch.rand(2)[1].item() == nxt
        True
    """

    def __init__(self, seeds: Sequence[int]) -> None:
        outside = capture_rng_state()
        self.states: list[dict[str, Any]] = []
        try:
            for seed in seeds:
                seed_everything(int(seed))
                self.states.append(capture_rng_state())
        finally:
            restore_rng_state(outside)
        self._active: int | None = None

    def __len__(self) -> int:
        return len(self.states)

    @contextmanager
    def activate(self, p: int, *, torch_only: bool = False) -> Iterator[None]:
        """Within the block the global RNGs are learner ``p``'s; afterwards its advanced state
        is kept and the previous global state is back. Not reentrant.

        ``torch_only=True`` swaps only torch's default CPU generator (about 1 us instead of
        about 400 us for all of Python's, NumPy's and torch's): for hot loops whose draws are
        torch's alone, such as sampling actions (the envs draw from their own generators).
        """
        if self._active is not None:
            raise RuntimeError(f"learner {self._active}'s RNG is already active")
        if torch_only:
            outside_torch = torch.get_rng_state()
            torch.set_rng_state(self.states[p]["torch"])
        else:
            outside = capture_rng_state()
            restore_rng_state(self.states[p])
        self._active = p
        try:
            yield
        finally:
            self._active = None
            if torch_only:
                self.states[p]["torch"] = torch.get_rng_state()
                torch.set_rng_state(outside_torch)
            else:
                self.states[p] = capture_rng_state()
                restore_rng_state(outside)

    def generators(self) -> list[torch.Generator]:
        """One CPU ``torch.Generator`` per learner in its torch state (for
        :meth:`~cmo_rl.population.PopulationPPO.update`'s shuffles); hand them back to
        :meth:`keep_generators` afterwards.

        Examples:
            >>> rng = LearnerRNG([3])
            >>> g = rng.generators()
            >>> a = torch.randperm(5, generator=g[0])
            >>> rng.keep_generators(g)
            >>> _ = torch.manual_seed(3)
            >>> torch.equal(a, torch.randperm(5))
            True
        """
        return [torch.Generator().set_state(state["torch"]) for state in self.states]

    def keep_generators(self, generators: Sequence[torch.Generator]) -> None:
        """Store the generators' advanced torch states as the learners' torch states."""
        if len(generators) != len(self.states):
            raise ValueError(f"{len(generators)} generators for {len(self.states)} learners")
        for state, generator in zip(self.states, generators):
            state["torch"] = generator.get_state()
