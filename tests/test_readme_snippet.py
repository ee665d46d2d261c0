"""The README's component snippet ("Use the components in your own TorchRL code") runs as
written, without a single warning, on the real task: only its budget numbers are shrunk, so
that the first batch ends no episode (the dual step is skipped) and the next ones do."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Use the components in your own TorchRL code"
_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)

#: text of the snippet -> what the test runs instead: 2 envs, 30-step episodes, three batches of
#: 20 steps per env (episodes end at steps 30 and 60: none in the first batch, one per env in
#: each of the next two), 2 PPO epochs of 2 minibatches.
TINY_BUDGET = {
    "num_envs=8,": "num_envs=2,",
    "max_episode_steps=1000)": "max_episode_steps=30)",
    "frames_per_batch=4_000,": "frames_per_batch=40,",
    "total_frames=200_000,": "total_frames=120,",
    "range(10)": "range(2)",
    ".split(500)": ".split(20)",
}


def snippet() -> str:
    """The first python block of the README section, verbatim."""
    text = README.read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    blocks = _BLOCK.findall(text[start:end])
    assert len(blocks) == 1, f"expected one python block in {SECTION!r}, found {len(blocks)}"
    return blocks[0]


def shrink(code: str, substitutions: dict[str, str]) -> str:
    """Replace each text of ``substitutions``; each must occur exactly once."""
    for old, new in substitutions.items():
        assert code.count(old) == 1, f"the README snippet has no single {old!r} to shrink"
        code = code.replace(old, new)
    return code


def test_shrink_refuses_a_missing_or_repeated_text() -> None:
    assert shrink("a = 1\n", {"1": "2"}) == "a = 2\n"
    with pytest.raises(AssertionError, match="no single"):
        shrink("a = 1\nb = 1\n", {"1": "2"})
    with pytest.raises(AssertionError, match="no single"):
        shrink("a = 1\n", {"3": "2"})


def test_the_snippet_is_complete_code() -> None:
    code = snippet()
    assert "..." not in code
    compile(code, str(README), "exec")  # no placeholder: the block is a program
    for piece in ("multiplier.update(", "Collector(", ".backward()", "optim.step()"):
        assert piece in code


def test_readme_snippet_runs_without_warnings_through_a_batch_without_episodes() -> None:
    # The snippet's imports, done first: importing torchrl.collectors defines torchrl's own
    # WeightUpdaterBase subclasses, which emit DeprecationWarnings about torchrl itself (hidden by
    # Python's default filters). Imported here, they are the same, already-loaded modules whether
    # this test runs alone or after others; everything the snippet does from then on runs with
    # every warning turned into an error.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import torchrl.collectors  # noqa: F401

        import cmo_rl  # noqa: F401

    code = shrink(snippet(), TINY_BUDGET)
    ns: dict = {"__name__": "__readme__"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # any warning, ours or a library's, fails the test
            exec(compile(code, str(README), "exec"), ns)  # noqa: S102
    finally:
        torch.set_num_threads(threads)

    batch, multiplier, out = ns["batch"], ns["multiplier"], ns["out"]
    assert tuple(batch.batch_size) == (2, 20)
    # three batches: the first had no finished episode and did not step the controller; each
    # of the other two ended one episode per env and stepped it once
    assert int(multiplier.history_index) == 2
    assert int(batch["next", "done"].sum()) == 2  # the last batch: the episodes of step 60
    assert ns["episode_cost"].numel() == 2
    for key in ("loss_objective", "loss_critic", "loss_cost_critic", "loss_entropy"):
        assert math.isfinite(out[key].item())
    assert out["lagrange_multiplier"].item() == float(multiplier.value) >= 0.0
