"""The ``cmo`` program: smoke run, config errors, resume, determinism, every key used."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from cmo_rl.cli import _main, train
from cmo_rl.config import ConfigError
from cmo_rl.config import check_override_keys as _check_override_keys
from cmo_rl.lifecycle.checkpoint import latest_checkpoint, load_checkpoint
from cmo_rl.meta.trainer import TRAINER_KEYS
from cmo_rl.meta_schema import CONF_DIR, SCHEMA

REPO = Path(__file__).resolve().parents[1]
CMO = Path(sys.executable).with_name("cmo")

#: 2 tasks x (2 inner rounds + 1 final batch) x 4 envs x 10 steps = 240 env steps per iteration.
TINY = [
    "env_ids=[MockCMDP-v0]",
    "eval_env_ids=[]",
    "episode_length=10",
    "vector_envs_per_task=4",
    "hidden_layers=[8]",
    "hidden_size=4",
    "total_meta_iters=4",
    "meta_batch_size=2",
    "inner_rollouts=2",
    "unroll_steps=2",
    "critic_steps=2",
    "meta_lr=0.05",
    "init_etaR=0.05",
    "init_etaC=0.05",
    "cost_limit=2.0",
    "mu=2.0",
    "log_interval=1",
    "checkpoint_interval=2",
    "eval_episodes=4",
    "meta_test.seeds=[5,6]",
    "progress=false",
    "seed=3",
]
STEPS_PER_ITER = 2 * (2 + 1) * 4 * 10


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base=None):
        return hydra_compose("default", overrides=overrides)


def run_cmo(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [str(CMO), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def metrics(run_dir: Path) -> pd.DataFrame:
    df = pd.read_csv(run_dir / "metrics.csv", float_precision="round_trip")
    return df[[c for c in df.columns if not c.startswith("time/")]]


def the_run(root: Path, kind: str = "lstm") -> Path:
    runs = sorted((root / f"meta_{kind}" / "MockCMDP-v0").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def test_cli_smoke_run_on_the_mock_cmdp(tmp_path):
    out = run_cmo([*TINY, "meta_optimizer_type=pid", "run_root=runs"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    run = the_run(tmp_path / "runs", "pid")  # relative run_root: under the working directory
    df = metrics(run)
    assert df["step"].tolist() == [1, 2, 3, 4]
    assert df["meta/env_steps"].tolist() == [STEPS_PER_ITER * k for k in (1, 2, 3, 4)]
    for column in [
        "meta/objective", "meta/return", "meta/cost", "meta/lambda", "meta/violation",
        "meta/return/MockCMDP-v0", "meta/cost/MockCMDP-v0", "meta/grad_norm", "meta/grad_norm/KP",
        "meta/KP", "meta/KI", "meta/KD", "meta/etaR", "meta/etaC", "meta/lr",
        "meta/skipped_updates",
    ]:  # fmt: skip
        assert df[column].notna().all(), column
    # one task id: the per-task columns are the means; objective = R - mu max(0, C - d)
    assert (df["meta/return"] == df["meta/return/MockCMDP-v0"]).all()
    expected = df["meta/return"] - 2.0 * (df["meta/cost"] - 2.0).clip(lower=0)
    assert (df["meta/objective"] - expected).abs().max() < 1e-4
    assert (df["meta/lr"] == 0.05).all() and (df["meta/skipped_updates"] == 0).all()
    raw = pd.read_csv(run / "metrics.csv")
    assert raw["time/total"].is_monotonic_increasing and raw["time/iteration"].gt(0).all()
    # the meta-test logs the learned optimizer's deterministic evaluation at the last step
    assert raw["eval/episode_return/MockCMDP-v0"].notna().tolist() == [False] * 3 + [True]

    state = load_checkpoint(latest_checkpoint(run))
    assert state["step"] == state["iteration"] == 4 and state["env_steps"] == 4 * STEPS_PER_ITER
    assert {
        "meta_optimizer",
        "outer_optimizer",
        "generator",
        "rng",
        "initial_meta_optimizer",
    } <= set(state)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step_000000000002.pt",
        "step_000000000004.pt",
    ]
    assert state["config"]["meta_optimizer_type"] == "pid"
    assert yaml.safe_load((run / "config.yaml").read_text())["env_ids"] == ["MockCMDP-v0"]
    for png in ("meta_training.png", "meta_test_return.png", "meta_test_cost.png"):
        assert (run / "plots" / png).stat().st_size > 1000
    assert list((run / "tensorboard").iterdir())
    table = (run / "meta_test.txt").read_text()
    assert "initial" in table and "learned" in table and "change" in table
    rows = pd.read_csv(run / "meta_test.csv")
    assert sorted(set(rows["optimizer"])) == ["initial", "learned"] and set(rows["seed"]) == {5, 6}
    assert "change" in out.stdout and "[4/4]" in out.stdout
    assert "PID gains, initial -> learned: KP 0.08 -> " in out.stdout
    # Hydra wrote nothing of its own
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


def test_bad_config_exits_2_with_one_message_naming_every_key(tmp_path):
    out = run_cmo(
        [
            "meta_batch_size=0",
            "meta_lr=-1e-3",
            "cost_limit=-5",
            "meta_optimizer_type=lsmt",
            "env_ids=[SafetyPointGaol1-v0]",
            "hidden_layers=[0]",
            "meta_test.seeds=[]",
        ],
        cwd=tmp_path,
    )
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    assert "invalid config (7 problems):" in out.stderr
    for text in [
        "meta_batch_size: got 0",
        "meta_lr: got -0.001",
        "cost_limit: got -5",
        "meta_optimizer_type: got 'lsmt', allowed: one of ['lstm', 'pid'] (did you mean 'lstm'?)",
        "env_ids: got ['SafetyPointGaol1-v0']: item 0: unknown Safety-Gymnasium task id",
        "did you mean 'SafetyPointGoal1-v0'",
        "hidden_layers: got [0]",
        "meta_test.seeds: got []",
    ]:
        assert text in out.stderr, text
    assert list(tmp_path.iterdir()) == []  # no run directory, nothing written

    unknown = run_cmo(["meta_lrr=1e-3", "+foo=1", "meta_test.round=2"], cwd=tmp_path)
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert "meta_lrr: unknown key (did you mean meta_lr?)" in unknown.stderr
    assert "foo: unknown key" in unknown.stderr
    assert "meta_test.round: unknown key (did you mean meta_test.rounds?)" in unknown.stderr


@pytest.mark.parametrize(
    "override, message",
    [
        ("meta_batch_size=abc", "meta_batch_size: got 'abc' (str), allowed: int >= 1"),
        ("unroll_steps=0", "unroll_steps: got 0, out of range"),
        ("init_KP=0", "init_KP: got 0, out of range; allowed: float > 0"),
        ("gamma=1.5", "gamma: got 1.5, out of range"),
        ("nan_policy=ignore", "nan_policy: got 'ignore'"),
        ("device=gpu", "device: got 'gpu': not a torch device string"),
        ("eval_env_ids=[MockCMDP-v0]", "eval_env_ids: ['MockCMDP-v0'] are also training tasks"),
        ("env_ids=[]", "env_ids: got []: needs at least one entry"),
    ],
)
def test_each_bad_value_is_named(override, message, tmp_path):
    cfg = compose([*TINY, f"run_root={tmp_path}", override])
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert message in str(err.value)
    assert list(tmp_path.iterdir()) == []


def check_override_keys(args):
    _check_override_keys(args, SCHEMA)


def test_check_override_keys_accepts_hydra_flags_and_groups():
    check_override_keys(["preset=quick", "hydra.run.dir=.", "hydra/launcher=basic", "--cfg", "job"])
    check_override_keys(["meta_test.compare_baselines=true", "resume=null"])
    with pytest.raises(ConfigError, match="meta_test.x.y: unknown key"):
        check_override_keys(["meta_test.x.y=1"])


def _tiny(tmp_path: Path, *extra: str):
    return compose([*TINY, f"run_root={tmp_path / 'runs'}", *extra])


def test_resume_reaches_the_same_metrics_as_an_uninterrupted_run(tmp_path):
    full = train(_tiny(tmp_path / "a", "meta_test.enabled=false"))
    part = train(_tiny(tmp_path / "b", "meta_test.enabled=false", "total_meta_iters=2"))
    assert metrics(part)["step"].tolist() == [1, 2]
    torch.manual_seed(12345)  # the resumed run must not depend on the global RNG it starts with
    resumed = train(
        _tiny(tmp_path / "b", "meta_test.enabled=false", "total_meta_iters=4", f"resume={part}")
    )
    assert resumed == part
    pd.testing.assert_frame_equal(metrics(resumed), metrics(full), check_exact=True)
    a = load_checkpoint(latest_checkpoint(full))
    b = load_checkpoint(latest_checkpoint(resumed))
    for key, value in a["meta_optimizer"].items():
        assert torch.equal(value, b["meta_optimizer"][key]), key
    assert a["env_steps"] == b["env_steps"] == 4 * STEPS_PER_ITER
    assert b["time_total"] > 0
    assert (resumed / "config.resume-1.yaml").exists()

    # a changed trajectory key is refused; the run directory stays as it was
    with pytest.raises(ConfigError, match="meta_lr: got 0.1 but the resumed run has 0.05"):
        train(_tiny(tmp_path / "b", "meta_lr=0.1", f"resume={part}"))


def test_resume_latest_finds_the_newest_run_of_any_type_and_task(tmp_path):
    """`cmo resume=latest` used to look only under the default env_ids' first task (and the
    default optimizer type): a PID run on another task was never found."""
    args = [*TINY, "meta_test.enabled=false", "run_root=runs"]
    first = run_cmo([*args, "meta_optimizer_type=pid", "total_meta_iters=1"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    (run,) = (tmp_path / "runs" / "meta_pid").glob("*/*")
    again = run_cmo(["resume=latest", "total_meta_iters=2", "run_root=runs", "progress=false"],
                    cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.splitlines()[0] == f"resumed {run.relative_to(tmp_path)} at step 1"
    assert metrics(run)["step"].tolist() == [1, 2]


def test_same_seed_twice_gives_identical_metrics(tmp_path):
    first = train(_tiny(tmp_path / "a", "meta_optimizer_type=pid"))
    second = train(_tiny(tmp_path / "b", "meta_optimizer_type=pid"))
    pd.testing.assert_frame_equal(metrics(first), metrics(second), check_exact=True)
    rows = [pd.read_csv(r / "meta_test.csv", float_precision="round_trip") for r in (first, second)]
    pd.testing.assert_frame_equal(*rows, check_exact=True)
    other = train(_tiny(tmp_path / "c", "meta_optimizer_type=pid", "seed=4"))
    assert not metrics(other)["meta/objective"].equals(metrics(first)["meta/objective"])


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_corrupt_checkpoint_gives_a_clear_error_and_touches_nothing(tmp_path):
    run = train(_tiny(tmp_path, "meta_test.enabled=false"))
    ckpt = latest_checkpoint(run)
    ckpt.write_bytes(ckpt.read_bytes()[:-10])
    before = _tree(run)
    with pytest.raises(ConfigError) as err:
        train(_tiny(tmp_path, "total_meta_iters=6", f"resume={run}"))
    assert f"resume: checkpoint {ckpt}: truncated" in str(err.value)
    assert "nothing in" in str(err.value)
    assert _tree(run) == before

    with pytest.raises(ConfigError, match="is not an existing run directory"):
        train(_tiny(tmp_path, f"resume={tmp_path / 'nope'}"))


def test_non_finite_meta_gradient_is_skipped_and_counted_or_stops(tmp_path, monkeypatch):
    import cmo_rl.meta.trainer as trainer_module

    real = trainer_module.bilevel_objective
    calls = {"n": 0}

    def poisoned(*args, **kwargs):  # the 3rd task (iteration 2) gets a NaN objective
        result = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            result.objective = result.objective * float("nan")
        return result

    monkeypatch.setattr(trainer_module, "bilevel_objective", poisoned)
    run = train(_tiny(tmp_path / "skip", "meta_test.enabled=false", "log_interval=2"))
    df = metrics(run)
    assert df["step"].tolist() == [2, 4]
    assert df["meta/skipped_updates"].tolist() == [1.0, 0.0]  # summed over the window

    calls["n"] = 0
    with pytest.raises(SystemExit) as stop:
        _main(_tiny(tmp_path / "raise", "meta_test.enabled=false", "nan_policy=raise"))
    assert stop.value.code == 3
    run = next((tmp_path / "raise").rglob("metrics.csv")).parent
    assert load_checkpoint(latest_checkpoint(run))["step"] == 1  # the last good iteration


def test_every_config_key_is_read_by_the_program(tmp_path):
    """Fails when a key of default.yaml is not used: the program runs on a view of the config
    that records reads, with every feature on (meta-test, held-out task, baselines), once per
    meta-training algorithm; every key must be read by one of them."""
    tracked = []
    train(
        _tiny(
            tmp_path,
            "total_meta_iters=1",
            "meta_batch_size=1",
            "meta_test.seeds=[5]",
            "meta_test.rounds=1",
            "meta_test.compare_baselines=true",
            "eval_episodes=1",
        ),
        tracked=tracked,
    )
    rule_only = {
        "es.generations", "es.pairs", "es.seeds", "es.sigma", "es.lr", "es.nu", "es.rule_hidden",
        "es.target", "es.primal_hidden", "online.passes", "online.seeds", "online.lr", "online.rule_hidden",
    }  # fmt: skip
    unread = tracked[0].unread()
    inner = ("es.inner.", "online.inner.")
    assert {k for k in unread if not k.startswith(inner)} == rule_only
    train(
        _tiny(
            tmp_path / "es",
            "meta_algorithm=es",
            "episode_length=25",
            "es.generations=1",
            "es.pairs=1",
            "es.rule_hidden=2",
            "es.target=primal",  # reads es.primal_hidden too (and es.rule_hidden, for lambda)
            "es.primal_hidden=2",
            "es.inner.total_steps=100",
            "es.inner.steps_per_epoch=100",
            "es.inner.num_envs=2",
            "es.inner.update_iters=1",
            "meta_test.seeds=[5]",
        ),
        tracked=tracked,
    )
    train(
        _tiny(
            tmp_path / "online",
            "meta_algorithm=online",
            "episode_length=25",
            "online.passes=1",
            "online.rule_hidden=2",
            "online.inner.total_steps=200",
            "online.inner.steps_per_epoch=100",
            "online.inner.num_envs=2",
            "online.inner.update_iters=1",
            "meta_test.seeds=[5]",
        ),
        tracked=tracked,
    )
    assert unread & tracked[1].unread() & tracked[2].unread() == set()
    # the keys MetaTrainer.from_config gets are the ones its docstring documents
    from cmo_rl.meta import trainer as trainer_module

    documented = set(re.findall(r"\b[a-zA-Z_]+\b", trainer_module.__doc__.split("Config keys")[1]))
    assert set(TRAINER_KEYS) <= documented
    # default.yaml, the schema and docs/configuration.md list the same keys (a free-form
    # sub-config, es.inner or online.inner, is one key of the schema)
    default = yaml.safe_load((CONF_DIR / "default.yaml").read_text())
    default.pop("defaults"), default.pop("hydra")

    def leaves(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict) and f"{prefix}{key}" not in ("es.inner", "online.inner"):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    assert set(leaves(default)) == set(leaves(SCHEMA))
    docs = (REPO / "docs" / "configuration.md").read_text()
    for key in leaves(default):
        assert f"`{key}`" in docs, key


@pytest.mark.slow
def test_sigterm_checkpoints_and_resume_continues_identically(tmp_path):
    """~40 s: SIGTERM mid-run (exit 143, checkpoint of the last completed iteration), then
    ``cmo resume=<run dir>`` gives the uninterrupted run's metrics.csv rows."""
    args = [*TINY, "total_meta_iters=30", "meta_test.enabled=false", "checkpoint_interval=100"]
    full = run_cmo([*args, "run_root=full"], cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-2000:]
    proc = subprocess.Popen(
        [str(CMO), *args, "run_root=cut"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        csv = list((tmp_path / "cut").rglob("metrics.csv"))
        if csv and len(csv[0].read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err.decode()[-2000:]
    run = the_run(tmp_path / "cut")
    step = load_checkpoint(latest_checkpoint(run))["step"]
    assert 2 <= step < 30  # row 3 is logged just before its snapshot is taken
    out = run_cmo([*args, "run_root=cut", f"resume={run}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"resumed {run} at step {step}" in out.stdout  # the lifecycle's message
    assert out.stdout.splitlines()[-1] == f"finished: {run}"
    pd.testing.assert_frame_equal(
        metrics(run), metrics(the_run(tmp_path / "full")), check_exact=True
    )


def test_meta_test_pairs_runs_with_common_random_numbers():
    import copy
    import functools

    from cmo_rl.meta import RolloutTaskSampler, make_meta_optimizer, meta_test, summarize_meta_test
    from cmo_rl.testing import MockCMDPEnv

    sampler = RolloutTaskSampler(
        [functools.partial(MockCMDPEnv, episode_length=6)],
        episode_length=6,
        vector_envs_per_task=3,
        hidden_layers=(4,),
    )
    opt = make_meta_optimizer("pid", init_etaR=0.1, init_etaC=0.1)
    faster = make_meta_optimizer("pid", init_etaR=0.3, init_etaC=0.1)
    torch.manual_seed(99)  # the rows must not depend on the global RNG
    kw = dict(seeds=[1, 2, 3], inner_rollouts=2, cost_limit=1.0, mu=3.0, eval_episodes=3)
    rows = meta_test({"initial": opt, "learned": copy.deepcopy(opt)}, sampler, **kw)
    assert len(rows) == 6 and {r["env_steps"] for r in rows} == {3 * 6 * 3}
    for r in rows:
        assert r["objective"] == r["return"] - 3.0 * max(0.0, r["cost"] - 1.0)
    summary = summarize_meta_test(rows)
    change = next(e for e in summary if e["optimizer"] == "change")
    assert change["objective"] == 0.0 and change["objective_ci95"] == 0.0  # same optimizer
    assert change["eval_return"] == 0.0
    other = meta_test({"initial": opt, "learned": faster}, sampler, **kw)
    assert [r["return"] for r in other[::2]] == [r["return"] for r in rows[::2]]  # replayed
    assert [r["return"] for r in other[1::2]] != [r["return"] for r in rows[1::2]]


def test_meta_test_summary_by_hand():
    from cmo_rl.meta import format_meta_test_table, summarize_meta_test

    rows = []
    for env_id, split in (("A", "train"), ("B", "train"), ("H", "held-out")):
        for seed, (before, after) in enumerate([(1.0, 2.0), (3.0, 7.0)]):
            for label, value in (("initial", before), ("learned", after)):
                rows.append(
                    dict(optimizer=label, env_id=env_id, split=split, seed=seed,
                         objective=value, cost=value / 2)
                )  # fmt: skip
    summary = summarize_meta_test(rows)
    groups = [(e["group"], e["optimizer"]) for e in summary]
    assert groups[:3] == [("A", "initial"), ("A", "learned"), ("A", "change")]
    assert ("all train", "change") in groups and ("all held-out", "change") not in groups
    change = summary[2]
    # paired differences 1 and 4: mean 2.5, s = 2.1213, t_{0.975,1} = 12.7062 -> 19.06
    assert change["objective"] == 2.5 and abs(change["objective_ci95"] - 19.0593) < 1e-3
    assert change["cost"] == 1.25
    all_train = next(
        e for e in summary if e["group"] == "all train" and e["optimizer"] == "learned"
    )
    assert all_train["objective"] == 4.5 and all_train["seeds"] == 2
    table = format_meta_test_table(summary)
    assert "+2.5 ± 19" in table and table.splitlines()[0].startswith("task")


def test_multirun_writes_one_run_per_job_and_nothing_in_the_working_directory(tmp_path):
    """``cmo -m meta_optimizer_type=lstm,pid``: a run directory per job, Hydra's multirun.yaml
    under ``run_root/multirun/`` (not a ``multirun/`` folder wherever cmo was started)."""
    short = [a for a in TINY if not a.startswith("total_meta_iters")]
    out = run_cmo(
        ["-m", "meta_optimizer_type=lstm,pid", *short, "total_meta_iters=1", "run_root=runs"],
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "meta_lstm", "meta_pid", "multirun"
    ]  # fmt: skip
    for kind in ("lstm", "pid"):
        assert (the_run(tmp_path / "runs", kind) / "metrics.csv").exists()
    (sweep,) = (tmp_path / "runs" / "multirun").iterdir()
    assert [p.name for p in sweep.iterdir()] == ["multirun.yaml"]
