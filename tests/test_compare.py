"""cmo_rl.compare: run planning, reuse of finished runs, crash reports, aggregation, frozen runs."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from types import SimpleNamespace as NS

import pandas as pd
import pytest

from cmo_rl.compare.aggregate import (
    comparison_table,
    format_markdown,
    plot_study,
    summarize_method_run,
    write_table,
)
from cmo_rl.compare.frozen import load_meta_optimizer, train
from cmo_rl.compare.plan import (
    METHODS,
    UNCONSTRAINED_LIMIT,
    Budget,
    RunSpec,
    fingerprint,
    meta_training_spec,
    plan_runs,
)
from cmo_rl.compare.runner import collect, execute, read_status, run_state
from cmo_rl.config import ConfigError
from cmo_rl.lifecycle.checkpoint import checkpoint_path, save_checkpoint

T975_2 = 4.302652730  # t_{0.975, 2}: 3 seeds


# ------------------------------------------------------------------------------ planning
def test_plan_gives_every_method_the_same_budget_and_its_own_directory(tmp_path):
    budget = Budget(total_steps=12000, num_envs=2, episode_length=1000, cost_limit=25.0)
    specs = plan_runs(
        study_dir=tmp_path,
        tasks=["SafetyPointGoal1-v0"],
        methods=["ppo", "cpo", "meta_pid"],
        seeds=[0, 1],
        budget=budget,
        overrides={"recipes": ["lr=1e-3"], "cpo": ["target_kl=0.02"]},
        checkpoints={"pid": "/ckpt/pid.pt"},
        populations=False,
    )
    assert len(specs) == 6 and len({s.directory for s in specs}) == 6
    assert specs[0].directory == tmp_path / "SafetyPointGoal1-v0" / "ppo" / "seed0"
    for spec in specs:
        over = dict(o.split("=", 1) for o in spec.overrides)
        assert over["total_steps"] == "12000" and over["num_envs"] == "2"
        assert over["run_root"] == str(spec.directory) and spec.final_step == 12000
    ppo, cpo, meta = specs[0], specs[2], specs[4]
    # unconstrained PPO: the recipe limit is overridden after the shared one (last wins), lambda 0
    limits = [o for o in ppo.overrides if o.startswith("cost_limit=")]
    assert limits == ["cost_limit=25.0", f"cost_limit={UNCONSTRAINED_LIMIT}"]
    assert "init_lambda=0.0" in ppo.overrides and "lr=1e-3" in ppo.overrides
    assert ppo.program[-1].endswith("recipes/ppo_lagrangian.py")
    assert "steps_per_epoch=2000" in cpo.overrides and cpo.overrides[-1] == "target_kl=0.02"
    assert meta.program == ("-m", "cmo_rl.compare.frozen")
    assert "checkpoint=/ckpt/pid.pt" in meta.overrides and "lr=1e-3" not in meta.overrides
    assert meta.blocked is None


def test_population_methods_run_their_seeds_as_one_process(tmp_path):
    budget = Budget(total_steps=12000, num_envs=2, episode_length=1000, eval_interval=2)
    specs = plan_runs(
        study_dir=tmp_path, tasks=["T"], methods=["pid_lag", "cpo"], seeds=[4, 7], budget=budget,
        overrides={"pid_lag": ["compile=false"]},
    )  # fmt: skip
    assert [s.key for s in specs] == ["T/pid_lag/seeds4,7", "T/cpo/seed4", "T/cpo/seed7"]
    population = specs[0]
    assert population.directory == tmp_path / "T" / "pid_lag" / "population"
    assert population.seeds == (4, 7) and population.seed == 4
    # the user's overrides come last and win over the population's compile=true
    assert population.overrides[-3:] == ("seeds=[4,7]", "compile=true", "compile=false")
    assert [m.key for m in population.members()] == ["T/pid_lag/seed4", "T/pid_lag/seed7"]
    # checkpoints at every evaluation (resumable), which the fingerprint ignores
    assert "checkpoint_interval=2" in specs[1].overrides
    moved = [
        o.replace("checkpoint_interval=2", "checkpoint_interval=6") for o in specs[1].overrides
    ]
    assert fingerprint("cpo", specs[1].program, moved, specs[1].directory) == specs[1].fingerprint


def test_plan_blocks_meta_methods_without_a_checkpoint_and_rejects_bad_input(tmp_path):
    budget = Budget(4000, 4, 1000)
    (spec,) = plan_runs(
        study_dir=tmp_path, tasks=["MockCMDP-v0"], methods=["meta_lstm"], seeds=[0], budget=budget
    )
    assert spec.blocked == "no meta-trained lstm checkpoint"
    with pytest.raises(ValueError, match="unknown method"):
        plan_runs(study_dir=tmp_path, tasks=["T"], methods=["ppo_lagg"], seeds=[0], budget=budget)
    with pytest.raises(ValueError, match="distinct"):
        plan_runs(study_dir=tmp_path, tasks=["T"], methods=["cpo"], seeds=[1, 1], budget=budget)
    with pytest.raises(ValueError, match="less than one update"):
        Budget(total_steps=3000, num_envs=4, episode_length=1000)
    assert Budget(10000, 4, 1000).final_step == 8000  # 2 whole updates of 4000 steps


def test_fingerprint_follows_the_configuration_not_the_location(tmp_path):
    kw = dict(tasks=["MockCMDP-v0"], methods=["cpo"], seeds=[0])
    a = plan_runs(study_dir=tmp_path / "a", budget=Budget(400, 4, 25), **kw)[0]
    b = plan_runs(study_dir=tmp_path / "b", budget=Budget(400, 4, 25), **kw)[0]
    c = plan_runs(study_dir=tmp_path / "a", budget=Budget(800, 4, 25), **kw)[0]
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_meta_training_spec_scales_the_limit_to_its_episodes(tmp_path):
    spec = meta_training_spec(
        "lstm",
        study_dir=tmp_path,
        env_ids=["SafetyHalfCheetahVelocity-v1", "SafetyPointGoal1-v0"],
        episode_length=200,
        total_meta_iters=7,
        seed=5,
        budget=Budget(4000, 4, 1000, cost_limit=25.0, hidden_layers=(32, 16)),
        extra=["meta_lr=0.01"],
    )
    over = dict(o.split("=", 1) for o in spec.overrides)
    assert over["cost_limit"] == "5.0"  # 25 per 1000 steps = 5 per 200
    assert over["env_ids"] == "[SafetyHalfCheetahVelocity-v1,SafetyPointGoal1-v0]"
    assert over["hidden_layers"] == "[32,16]" and over["meta_test.enabled"] == "false"
    assert over["meta_optimizer_type"] == "lstm" and spec.overrides[-1] == "meta_lr=0.01"
    assert spec.final_step == 7 and spec.directory == tmp_path / "meta_train" / "lstm"
    with pytest.raises(ValueError, match="'lstm' or 'pid'"):
        meta_training_spec("adam", study_dir=tmp_path, env_ids=["T"], episode_length=1,
                           total_meta_iters=1, seed=0, budget=Budget(400, 4, 25))  # fmt: skip


# ------------------------------------------------------------------------------ execution
_FAKE = """
import json, sys, time
from pathlib import Path
args = dict(a.split("=", 1) for a in sys.argv[1:])
root = Path(args["run_root"])
with open(args["counter"], "a") as f:
    f.write(f"{root.name} {time.time()} start\\n")
with open(args["counter"] + ".resume", "a") as f:
    f.write(f"{args.get('resume', '-')}\\n")
if args.get("mode") == "crash":
    print("boom: simulated failure", file=sys.stderr)
    sys.exit(3)
if args.get("mode") == "sleep":
    time.sleep(float(args["sleep"]))
seeds = args["seeds"].strip("[]").split(",") if "seeds" in args else [args["seed"]]
runs = [root / "fake" / "T" / ("20250101-000000" + (f"-{i}" if i else "")) for i in range(len(seeds))]
for run, seed in zip(runs, seeds):
    if args.get("mode") == "nothing":
        break
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run / "metrics.csv").write_text(
        "step,train/episode_return,train/episode_cost,eval/episode_return,eval/episode_cost\\n"
        f"10,1.0,30.0,,\\n20,{3.0 + int(seed)},20.0,4.0,10.0\\n")
    (run / "checkpoints" / "step_000000000020.pt").write_bytes(b"x")
    if "seeds" in args:
        index = {"seeds": [int(s) for s in seeds], "run_dirs": [str(r) for r in runs]}
        (run / "population.json").write_text(json.dumps(index))
with open(args["counter"], "a") as f:
    f.write(f"{root.name} {time.time()} end\\n")
"""


@pytest.fixture
def fake(tmp_path):
    script = tmp_path / "fake_program.py"
    script.write_text(textwrap.dedent(_FAKE))
    counter = tmp_path / "calls.txt"
    counter.touch()

    def spec(seed: int, *extra: str, method: str = "cpo") -> RunSpec:
        directory = tmp_path / "study" / "T" / method / f"seed{seed}"
        over = (f"run_root={directory}", f"counter={counter}", f"seed={seed}", *extra)
        return RunSpec("T", method, seed, directory, over, (str(script),), 20)

    def population(*seeds: int, method: str = "ppo_lag") -> RunSpec:
        directory = tmp_path / "study" / "T" / method / "population"
        listed = ",".join(map(str, seeds))
        over = (f"run_root={directory}", f"counter={counter}", f"seeds=[{listed}]")
        return RunSpec("T", method, seeds[0], directory, over, (str(script),), 20, seeds=seeds)

    def calls(kind: str = "start") -> list[str]:
        return [ln.split()[0] for ln in counter.read_text().splitlines() if ln.endswith(kind)]

    def resumes() -> list[str]:
        return Path(f"{counter}.resume").read_text().split()

    return NS(spec=spec, population=population, calls=calls, resumes=resumes, counter=counter)


def test_a_second_call_reuses_finished_runs(fake):
    specs = [fake.spec(0), fake.spec(1)]
    lines: list[str] = []
    first = execute(specs, echo=lines.append)
    assert [r.status for r in first] == ["done", "done"]
    assert fake.calls() == ["seed0", "seed1"]
    csv = first[0].run_dir / "metrics.csv"
    mtime = csv.stat().st_mtime_ns
    assert run_state(specs[0]) == "done" and read_status(specs[0].directory)["returncode"] == 0

    second = execute(specs, echo=lines.append)
    assert [r.status for r in second] == ["reused", "reused"]
    assert fake.calls() == ["seed0", "seed1"]  # not run again
    assert csv.stat().st_mtime_ns == mtime
    assert second[0].run_dir == first[0].run_dir
    assert "2 runs: 2 reused, 0 to run, 1 at a time" in lines

    # another configuration of the same run is not reused: it reruns from a clean directory
    changed = fake.spec(0, "lr=0.5")
    assert run_state(changed) == "missing"
    assert execute([changed], echo=lines.append)[0].status == "done"
    assert fake.calls() == ["seed0", "seed1", "seed0"]


def test_an_interrupted_run_resumes_from_its_run_directory(fake):
    spec = fake.spec(0)
    first = execute([spec], echo=lambda s: None)[0]
    checkpoints = first.run_dir / "checkpoints"
    # killed after its last checkpoint but before its status was written: nothing to rerun
    (spec.directory / "status.json").unlink()
    lines: list[str] = []
    assert execute([spec], echo=lines.append)[0].status == "done"
    assert fake.calls() == ["seed0"] and "(already finished)" in lines[-2]
    # killed mid-run (its newest checkpoint is of update 1 of 2): resumed from there
    (spec.directory / "status.json").unlink()
    (checkpoints / "step_000000000020.pt").rename(checkpoints / "step_000000000010.pt")
    assert run_state(spec) == "missing"
    assert execute([spec], echo=lines.append)[0].status == "done"
    assert fake.calls() == ["seed0", "seed0"]
    assert fake.resumes() == ["-", str(first.run_dir)]
    assert f"resume   T/cpo/seed0 from {first.run_dir}" in lines
    assert (spec.directory / "command.json").is_file()
    # without a checkpoint there is nothing to resume: a fresh run in a cleared directory
    (spec.directory / "status.json").unlink()
    for ckpt in first.run_dir.glob("checkpoints/*.pt"):
        ckpt.unlink()
    execute([spec], echo=lambda s: None)
    assert fake.resumes()[-1] == "-"


def test_a_run_a_signal_stopped_resumes_and_one_that_failed_starts_afresh(fake):
    """``status.json`` of a killed run (exit -9, or 143 after its own SIGTERM checkpoint):
    resumed from its newest checkpoint, not cleared; an error exit: a fresh run."""
    spec = fake.spec(0)
    first = execute([spec], echo=lambda s: None)[0]
    checkpoints = first.run_dir / "checkpoints"
    for code, resumed in ((-9, True), (143, True), (3, False)):
        (checkpoints / "step_000000000020.pt").rename(checkpoints / "step_000000000010.pt")
        status = read_status(spec.directory)
        (spec.directory / "status.json").write_text(
            json.dumps({**status, "status": "crashed", "returncode": code})
        )
        assert run_state(spec) == "crashed"
        lines: list[str] = []
        assert execute([spec], echo=lines.append)[0].status == "done"
        expected = str(first.run_dir) if resumed else "-"
        assert fake.resumes()[-1] == expected, code
        assert any(line.startswith("resume   T/cpo/seed0") for line in lines) == resumed


def test_a_population_is_one_process_and_one_result_per_seed(fake):
    spec = fake.population(3, 5)
    results = execute([spec], echo=lambda s: None)
    assert [(r.spec.key, r.status) for r in results] == [("T/ppo_lag/seed3", "done"),
                                                         ("T/ppo_lag/seed5", "done")]  # fmt: skip
    assert fake.calls() == ["population"]
    assert [r.run_dir.name for r in results] == ["20250101-000000", "20250101-000000-1"]
    assert read_status(spec.directory)["run_dir"] == {"3": str(results[0].run_dir),
                                                      "5": str(results[1].run_dir)}  # fmt: skip
    assert [r.status for r in collect([spec])] == ["reused", "reused"]
    table = comparison_table(results, cost_limit=25.0, mu=1.0)
    assert table.iloc[0]["seeds"] == 2 and table.iloc[0]["train_return"] == pytest.approx(7.0)
    # a member without its final checkpoint: the population is not done, and resumes
    (results[1].run_dir / "checkpoints" / "step_000000000020.pt").unlink()
    (spec.directory / "status.json").unlink()
    assert run_state(spec) == "missing"
    assert [r.status for r in execute([spec], echo=lambda s: None)] == ["done", "done"]
    assert fake.resumes() == ["-", str(results[0].run_dir)]


def test_a_crashed_run_is_reported_with_its_log_and_retried_next_time(fake):
    specs = [fake.spec(0), fake.spec(1, "mode=crash")]
    lines: list[str] = []
    results = execute(specs, echo=lines.append)
    ok, bad = results
    assert ok.status == "done" and bad.status == "crashed" and not bad.ok
    assert bad.returncode == 3 and bad.reason == "exit code 3"
    assert "boom: simulated failure" in bad.log.read_text()
    status = read_status(bad.spec.directory)
    assert status["status"] == "crashed" and "boom" in status["log_tail"]
    assert any(ln.startswith("CRASHED  T/cpo/seed1: exit code 3; log: ") for ln in lines)
    assert str(bad.log) in "\n".join(lines)

    # the table keeps it: counted and listed with its log, the mean is over the finished seed
    table = comparison_table(results, cost_limit=25.0, mu=1.0)
    row = table.iloc[0]
    assert (row["seeds"], row["crashed"]) == (1, 1)
    assert row["crashed_runs"] == f"seed1: exit code 3 (log: {bad.log})"
    assert row["eval_return"] == 4.0 and math.isnan(row["eval_return_ci95"])
    md = format_markdown(table)
    assert row["wall_s"] == pytest.approx(ok.wall_s) and row["wall_s"] > 0
    assert "| 1/2 |" in md and f"- CPO seed1: exit code 3 (log: {bad.log})" in md

    # without running anything, collect() reports the same crash
    collected = collect(specs)
    assert [r.status for r in collected] == ["reused", "crashed"]
    assert collected[1].reason == "exit code 3" and collected[1].log == bad.log
    # a crashed run is not reused: the next call runs it again
    execute(specs, echo=lambda s: None)
    assert fake.calls() == ["seed0", "seed1", "seed1"]


def test_exit_zero_without_results_or_over_the_timeout_is_a_crash(fake):
    nothing, slow = fake.spec(0, "mode=nothing"), fake.spec(1, "mode=sleep", "sleep=30")
    results = execute([nothing, slow], timeout_s=3, echo=lambda s: None)
    assert results[0].reason == "exited 0 but wrote no metrics.csv"
    assert results[1].status == "crashed" and results[1].reason.startswith("timed out after 3 s")
    assert results[1].returncode is None


def test_jobs_2_runs_two_subprocesses_at_once(fake):
    specs = [fake.spec(k, "mode=sleep", "sleep=2") for k in (0, 1)]
    results = execute(specs, jobs=2, echo=lambda s: None)
    assert [r.status for r in results] == ["done", "done"]
    times = {}
    for line in fake.counter.read_text().splitlines():
        name, t, kind = line.split()
        times[(name, kind)] = float(t)
    # the second started before the first ended (and vice versa): they overlapped
    assert times[("seed1", "start")] < times[("seed0", "end")]
    assert times[("seed0", "start")] < times[("seed1", "end")]
    with pytest.raises(ValueError, match="jobs"):
        execute(specs, jobs=0)


# ------------------------------------------------------------------------------ aggregation
def _run(seed, method, returns, costs, eval_r, eval_c, task="T"):
    n = len(returns)
    df = pd.DataFrame(
        {
            "step": [1000 * (k + 1) for k in range(n)],
            "train/episode_return": returns,
            "train/episode_cost": costs,
            "eval/episode_return": [math.nan] * (n - 1) + [eval_r],
            "eval/episode_cost": [math.nan] * (n - 1) + [eval_c],
        }
    )
    spec = NS(task=task, method=method, seed=seed)
    return NS(spec=spec, ok=True, metrics=df, status="done", reason=None, log=None)


def test_summarize_method_run_by_hand():
    df = _run(0, "cpo", [0.0, 4.0, 8.0, 8.0], [10.0, 30.0, 40.0, 20.0], 9.0, 35.0).metrics
    s = summarize_method_run(df, cost_limit=25.0, mu=0.5)
    assert s["eval_return"] == 9.0 and s["eval_cost"] == 35.0
    assert s["penalized_return"] == 9.0 - 0.5 * 10.0
    assert s["train_return"] == 8.0 and s["train_cost"] == 20.0  # last quarter: 1 point
    assert s["satisfaction_rate"] == 0.5  # 10 and 20 are <= 25
    assert s["cumulative_violation"] == 5.0 + 15.0
    assert s["overshoot"] == 15.0  # crossed up at 30, peak 40
    assert s["cost_oscillation"] == 0.0
    # trapezoids over steps 1000..4000: (2 + 6 + 8) * 1000 / 3000
    assert s["auc_return"] == pytest.approx(16.0 / 3.0)
    assert s["final_step"] == 4000.0
    with pytest.raises(ValueError, match="no evaluation row"):
        summarize_method_run(df.drop(columns=["eval/episode_cost"]), 25.0, 1.0)


def test_comparison_table_means_and_cis_over_seeds_by_hand(tmp_path):
    runs = [
        _run(0, "ppo_lag", [0.0, 10.0], [30.0, 20.0], 10.0, 20.0),
        _run(1, "ppo_lag", [0.0, 20.0], [30.0, 30.0], 20.0, 30.0),
        _run(2, "ppo_lag", [0.0, 30.0], [30.0, 40.0], 30.0, 40.0),
        _run(0, "cpo", [5.0, 5.0], [0.0, 0.0], 5.0, 0.0),
        _run(1, "cpo", [5.0, 5.0], [0.0, 0.0], 5.0, 0.0),
    ]
    table = comparison_table(runs, cost_limit=25.0, mu=2.0)
    assert table["method"].tolist() == ["ppo_lag", "cpo"]
    assert table["label"].tolist() == [METHODS["ppo_lag"].label, METHODS["cpo"].label]
    lag = table.iloc[0]
    assert lag["seeds"] == 3 and lag["crashed"] == 0
    # eval returns 10, 20, 30: mean 20, s = 10, half-width t * 10 / sqrt(3)
    assert lag["eval_return"] == 20.0
    assert lag["eval_return_ci95"] == pytest.approx(T975_2 * 10.0 / math.sqrt(3))
    # penalized: 10, 20 - 2 * 5, 30 - 2 * 15 -> 10, 10, 0
    assert lag["penalized_return"] == pytest.approx(20.0 / 3.0)
    # training costs [30, 20], [30, 30], [30, 40]: violations 5, 10, 20 -> 35 / 3
    assert lag["cumulative_violation"] == pytest.approx(35.0 / 3.0)
    assert lag["satisfaction_rate"] == pytest.approx((0.5 + 0.0 + 0.0) / 3.0)
    assert lag["overshoot"] == 0.0  # every curve starts above the limit: no upward crossing
    assert lag["auc_cost"] == pytest.approx((25.0 + 30.0 + 35.0) / 3.0)
    cpo = table.iloc[1]
    assert cpo["eval_return"] == 5.0 and cpo["eval_return_ci95"] == 0.0
    assert cpo["satisfaction_rate"] == 1.0

    md = format_markdown(table, notes={"T": "held out"})
    assert md.startswith("### T (held out)")
    assert "| PPO-Lag | 20.0 ± 24.8 | 30.0 ± 24.8 | 6.7 ± 14.3 |" in md
    assert "| CPO | 5.00 ± 0.00 | 0.000 ± 0.000 |" in md
    md_path, csv_path = write_table(table, tmp_path, header="Study X.")
    assert md_path.read_text().startswith("Study X.\n\n### T")
    back = pd.read_csv(csv_path)
    assert back.loc[0, "eval_return_ci95"] == pytest.approx(lag["eval_return_ci95"])


def test_all_crashed_method_keeps_its_row(tmp_path):
    crashed = NS(spec=NS(task="T", method="cpo", seed=0), ok=False, status="blocked",
                 reason="meta-training crashed", log=None)  # fmt: skip
    table = comparison_table([_run(0, "ppo", [1.0, 2.0], [0.0, 0.0], 2.0, 0.0), crashed], 25, 1)
    row = table.iloc[1]
    assert (row["seeds"], row["crashed"], row["crashed_runs"]) == (
        0,
        1,
        "seed0: meta-training crashed",
    )
    assert math.isnan(row["eval_return"])
    assert "| CPO | - | - |" in format_markdown(table)
    assert math.isnan(table.iloc[0]["wall_s"])  # hand-made runs have no wall time
    paths = plot_study([table_run for table_run in [_run(0, "ppo", [1.0, 2.0], [0.0, 0.0], 2.0, 0.0)]],
                       table, 25.0, tmp_path, prefix="x_")  # fmt: skip
    assert [p.name for p in paths] == ["x_curves_T.png", "x_scatter_T.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)


# ------------------------------------------------------------------------------ frozen runs
def _pid_checkpoint(path: Path, **config) -> Path:
    from cmo_rl.meta import make_meta_optimizer

    cfg = {"meta_optimizer_type": "pid", **config}
    opt = make_meta_optimizer(**cfg)
    return save_checkpoint(path, {"meta_optimizer": opt.state_dict(), "config": cfg})


def test_load_meta_optimizer_rejects_what_is_not_a_cmo_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="neither a checkpoint file nor a run directory"):
        load_meta_optimizer(tmp_path / "missing.pt")
    with pytest.raises(ConfigError, match="no valid checkpoint"):
        load_meta_optimizer(tmp_path)
    save_checkpoint(checkpoint_path(tmp_path, 5), {"step": 5})
    with pytest.raises(ConfigError, match="not a cmo checkpoint"):
        load_meta_optimizer(tmp_path)
    ckpt = _pid_checkpoint(tmp_path / "pid.pt", init_KI=0.25)
    opt, cfg, path = load_meta_optimizer(ckpt)
    assert float(opt.gains()["KI"]) == pytest.approx(0.25) and path == ckpt
    assert not any(p.requires_grad for p in opt.parameters())


def test_frozen_run_applies_the_pid_rule_with_the_rescaled_violation(tmp_path):
    gains = dict(init_KP=0.5, init_KI=0.25, init_KD=0.125, init_lambda=0.1, init_etaR=0.05)
    ckpt = _pid_checkpoint(tmp_path / "pid.pt", cost_limit=1.0, violation_scale=0.5, **gains)
    cfg = {
        "checkpoint": str(ckpt), "env_id": "MockCMDP-v0", "seed": 3, "total_steps": 40,
        "num_envs": 2, "episode_length": 5, "cost_limit": 2.0, "hidden_layers": [4],
        "eval_interval": 3, "eval_episodes": 3, "run_root": str(tmp_path / "runs"),
        "run_name": "meta_pid", "progress": False, "device": "cpu", "torch_threads": 1,
    }  # fmt: skip
    run = train(cfg)
    assert run.parent == tmp_path / "runs" / "meta_pid" / "MockCMDP-v0"
    df = pd.read_csv(run / "metrics.csv")
    assert df["step"].tolist() == [10, 20, 30, 40]  # 4 rounds of 2 envs x 5 steps
    assert df["eval/episode_return"].notna().tolist() == [False, False, True, True]
    assert df["eval/num_episodes"].dropna().tolist() == [4.0, 4.0]  # 3 rounded up to 2 x 2
    # s = 0.5 * (2.0 / 1.0): the trained relative violation scale; e_k = (C_k - 2) / 1
    e = (df["train/episode_cost"] - 2.0) / 1.0
    assert (df["train/violation"] == df["train/episode_cost"] - 2.0).all()
    integral, prev = 0.0, 0.0
    for k in range(4):
        integral = max(0.0, integral + e[k])
        lam = max(0.0, 0.1 + 0.5 * e[k] + 0.25 * integral + 0.125 * (e[k] - prev))
        prev = e[k]
        assert df["train/lambda"][k] == pytest.approx(lam, rel=1e-5, abs=1e-6), k
    assert (df["train/episode_length"] == 5).all() and (df["train/num_episodes"] == 2).all()
    assert (run / "checkpoints" / "step_000000000040.pt").is_file()
    assert (run / "plots" / "curves.png").is_file()
    # the policy moved: a frozen optimizer still trains
    from cmo_rl.lifecycle.checkpoint import load_checkpoint

    state = load_checkpoint(run / "checkpoints" / "step_000000000040.pt")
    assert state["config"]["violation_scale"] == 1.0
    assert float(state["lagrange_multiplier"]) == pytest.approx(df["train/lambda"].iloc[-1])


def test_frozen_cli_exits_2_on_a_bad_config(tmp_path, capsys):
    from cmo_rl.compare.frozen import main

    with pytest.raises(SystemExit) as err:
        main(["seed=-1", "colour=red", f"checkpoint={tmp_path}/x.pt"])
    assert err.value.code == 2
    msg = capsys.readouterr().err
    assert "seed: got -1" in msg and "colour" in msg
    with pytest.raises(SystemExit) as err:
        main(["env_id=MockCMDP-v0", f"checkpoint={tmp_path}/x.pt", f"run_root={tmp_path}"])
    assert err.value.code == 2
    assert "neither a checkpoint file" in capsys.readouterr().err
    assert not (tmp_path / "meta_frozen").exists()  # nothing written before the check


def test_fingerprints_survive_the_key_renames():
    """A study written before `lambda_init` / `max_episode_steps` became `init_lambda` /
    `episode_length` keeps its fingerprints: renamed keys are hashed under the old names."""
    import hashlib
    import json

    program, d = ["recipes/ppo_lagrangian.py"], Path("/s/ppo/seed0")
    new = ["init_lambda=0.0", "episode_length=1000", f"run_root={d}"]
    old = ["lambda_init=0.0", "max_episode_steps=1000", "run_root=<dir>"]
    text = json.dumps({"method": "ppo", "program": program, "overrides": old}, sort_keys=True)
    assert fingerprint("ppo", program, new, d) == hashlib.sha256(text.encode()).hexdigest()[:16]


def test_export_study_copies_tables_and_every_finished_runs_metrics(fake, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "export_study", Path(__file__).resolve().parents[1] / "scripts" / "export_study.py"
    )
    export = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export)
    execute([fake.population(3, 5), fake.spec(1), fake.spec(2, "mode=crash")], echo=lambda s: None)
    study = tmp_path / "study"
    (study / "summary.csv").write_text("task,method\n")
    moved = tmp_path / "moved"
    study.rename(moved)  # run directories are found beside their status files
    assert export.main([str(moved), str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    assert (out / "summary.csv").is_file()
    written = sorted(str(p.relative_to(out)) for p in out.glob("*/*/*.csv"))
    assert written == ["T/cpo/seed1.csv", "T/ppo_lag/seed3.csv", "T/ppo_lag/seed5.csv"]
    assert "20,8.0," in (out / "T" / "ppo_lag" / "seed5.csv").read_text()
    assert export.main([str(tmp_path / "nothing"), str(out)]) == 2


def test_study_table_joins_exported_cells_of_several_studies(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "study_table", Path(__file__).resolve().parents[1] / "scripts" / "study_table.py"
    )
    study_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study_table)

    def write(folder, method, seed, ret, last=200):
        path = tmp_path / folder / "T" / method / f"seed{seed}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"step": [100, last], "train/episode_return": [0.0, ret],
                      "train/episode_cost": [30.0, 20.0], "eval/episode_return": [None, ret],
                      "eval/episode_cost": [None, 27.0]}).to_csv(path, index=False)  # fmt: skip

    write("a", "pid_lag", 0, 1.0)
    write("a", "pid_lag", 1, 3.0)
    write("b", "learned_rule", 0, 5.0)
    write("b", "pid_lag", 0, 99.0)  # the first folder's cell wins
    out = tmp_path / "table"
    argv = [str(tmp_path / "a"), str(tmp_path / "b"), "--mu", "2", "--out", str(out)]
    assert study_table.main(argv) == 0
    table = pd.read_csv(out.with_suffix(".csv"))
    assert table["method"].tolist() == ["pid_lag", "learned_rule"]
    assert table["eval_return"].tolist() == [2.0, 5.0] and table["seeds"].tolist() == [2, 1]
    assert table["penalized_return"].tolist() == [2.0 - 2 * 2.0, 5.0 - 2 * 2.0]  # mu (27 - 25)
    assert "| learned rule |" in out.with_suffix(".md").read_text()
    write("c", "cpo", 0, 1.0, last=300)  # another budget
    assert study_table.main([str(tmp_path / "a"), str(tmp_path / "c")]) == 2
    assert "different env steps [200, 300]" in capsys.readouterr().err
