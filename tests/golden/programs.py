"""The fixed-seed runs whose ``metrics.csv`` must not change when the code is restructured.

Each entry is one program invocation from the command line (the stable, public interface):
every baseline recipe and ``cmo`` on the mock CMDP and on one Safety-Gymnasium task. The
committed ``<name>.csv`` files next to this module hold their ``metrics.csv`` (and, for ``cmo``,
``meta_test.csv``) without the wall-clock columns, as the code wrote them when they were made.

``kl_early_stop=false``: the estimator behind ``train/kl`` was changed on purpose (issue 10
point 7: non-negative ``E[(r - 1) - log r]``), so the comparison leaves out ``train/kl`` and
keeps the PPO passes independent of it; everything else must match exactly.

Regenerate (only when a change of the numbers is intended, and say so in the commit)::

    python tests/golden/programs.py

The committed files were made from the code before the restructuring (commit 61dd4c9, checked
out in a worktree, with this module's pinned arithmetic); the code after it reproduces them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

_MOCK = [
    "env_id=MockCMDP-v0",
    "num_envs=4",
    "episode_length=25",
    "steps_per_epoch=200",
    "total_steps=600",
    "minibatch_size=50",
    "update_iters=2",
    "eval_interval=2",
    "eval_episodes=2",
    "cost_limit=3.0",
]
_SAFETY = [
    "env_id=SafetyPointGoal1-v0",
    "num_envs=2",
    "episode_length=20",
    "steps_per_epoch=40",
    "total_steps=80",
    "minibatch_size=20",
    "update_iters=2",
    "eval_interval=1",
    "eval_episodes=1",
    "cost_limit=3.0",
]
_META = [
    "eval_env_ids=[]",
    "vector_envs_per_task=2",
    "hidden_layers=[8]",
    "hidden_size=4",
    "total_meta_iters=2",
    "meta_batch_size=2",
    "inner_rollouts=2",
    "unroll_steps=2",
    "critic_steps=1",
    "meta_lr=0.05",
    "log_interval=1",
    "meta_test.seeds=[1]",
    "eval_episodes=1",
]

#: name -> (script under recipes/, arguments)
PROGRAMS: dict[str, tuple[str, list[str]]] = {}
for _recipe in ("ppo", "ppo_lagrangian", "pid_lagrangian"):
    PROGRAMS[f"{_recipe}_mock"] = (_recipe, [*_MOCK, "kl_early_stop=false"])
    PROGRAMS[f"{_recipe}_safety"] = (_recipe, [*_SAFETY, "kl_early_stop=false"])
PROGRAMS["cpo_mock"] = ("cpo", _MOCK)
PROGRAMS["cpo_safety"] = ("cpo", _SAFETY)
PROGRAMS["cmo_lstm_mock"] = (
    "meta_train",
    [*_META, "env_ids=[MockCMDP-v0]", "episode_length=8", "cost_limit=1.0"],
)
PROGRAMS["cmo_pid_safety"] = (
    "meta_train",
    [
        *_META,
        "meta_optimizer_type=pid",
        "env_ids=[SafetyHalfCheetahVelocity-v1]",
        "episode_length=10",
        "cost_limit=1.0",
    ],
)
#: The CPU arithmetic is pinned (AVX2 kernels in ATen and MKL, MKL's conditional numerical
#: reproducibility): the same seed gives the same bits on every x86-64 CPU with AVX2, not only
#: on the machine the golden files were made on (an AVX-512 machine otherwise picks other
#: kernels than an AVX2-only one, and the last bits differ from the first row on).
PINNED_ARITHMETIC = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "MKL_CBWR": "AVX2",
}
#: Columns that are not a function of the seed (wall-clock) or changed on purpose.
IGNORED = ("time/", "train/kl")


def run(name: str, workdir: Path) -> dict[str, pd.DataFrame]:
    """Run program ``name`` under ``workdir``; its comparable tables by file name."""
    script, args = PROGRAMS[name]
    root = workdir / "runs"
    env = {**os.environ, **PINNED_ARITHMETIC, "PYTHONPATH": str(REPO)}
    env.pop("HYDRA_FULL_ERROR", None)
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "recipes" / f"{script}.py"),
            *args,
            "progress=false",
            f"run_root={root}",
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    (run_dir,) = [p.parent for p in root.rglob("metrics.csv")]
    tables = {"metrics": _comparable(read(run_dir / "metrics.csv"))}
    if (run_dir / "meta_test.csv").exists():
        tables["meta_test"] = _comparable(read(run_dir / "meta_test.csv"))
    return tables


def read(path: Path) -> pd.DataFrame:
    """A CSV with exact float parsing (pandas' default parser may be off in the last bit)."""
    return pd.read_csv(path, float_precision="round_trip")


def _comparable(frame: pd.DataFrame) -> pd.DataFrame:
    keep = [c for c in frame.columns if not c.startswith(IGNORED)]
    return frame[sorted(keep)]


def golden_path(name: str, table: str) -> Path:
    return HERE / f"{name}.{table}.csv"


def main() -> None:
    names = sys.argv[1:] or list(PROGRAMS)
    for name in names:
        workdir = Path(tempfile.mkdtemp(prefix=f"golden-{name}-"))
        try:
            for table, frame in run(name, workdir).items():
                frame.to_csv(golden_path(name, table), index=False)
                print(f"wrote {golden_path(name, table).relative_to(REPO)} {frame.shape}")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
