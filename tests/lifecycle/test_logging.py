"""Run directories, the wide metrics CSV, TensorBoard, resume, and signal safety (subprocesses)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import cmo_rl.lifecycle.logging as run_logging
from cmo_rl.lifecycle.logging import RunLogger, find_runs, make_run_dir
from cmo_rl.lifecycle.signals import Terminated, deferred_signals, exit_code_for, graceful_shutdown

REPO = Path(__file__).resolve().parents[2]


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def tb_scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


# -- make_run_dir ----------------------------------------------------------------------------


def test_make_run_dir_layout_and_no_overwrite(tmp_path, monkeypatch):
    monkeypatch.setattr(run_logging.time, "strftime", lambda fmt: "20250102-030405")
    first = make_run_dir(tmp_path, "ppo_lag", "SafetyPointGoal1-v0")
    assert first == tmp_path / "ppo_lag" / "SafetyPointGoal1-v0" / "20250102-030405"
    (first / "metrics.csv").write_text("precious")
    second = make_run_dir(tmp_path, "ppo_lag", "SafetyPointGoal1-v0")
    third = make_run_dir(tmp_path, "ppo_lag", "SafetyPointGoal1-v0")
    assert [second.name, third.name] == ["20250102-030405-1", "20250102-030405-2"]
    assert (first / "metrics.csv").read_text() == "precious"
    assert list(second.iterdir()) == [] and list(third.iterdir()) == []


def test_make_run_dir_resume(tmp_path, monkeypatch):
    stamps = iter(["20250101-000000"] * 11 + ["20241231-235959"])
    monkeypatch.setattr(run_logging.time, "strftime", lambda fmt: next(stamps))
    made = [make_run_dir(tmp_path, "cmo", "E") for _ in range(12)]
    # "-10" sorts after "-9" (numeric suffix), and time beats the suffix
    assert find_runs(tmp_path, "cmo", "E")[-1].name == "20250101-000000-10"
    assert make_run_dir(tmp_path, "cmo", "E", resume="latest") == made[10]
    assert make_run_dir(tmp_path, "cmo", "E", resume=made[3]) == made[3]
    with pytest.raises(ValueError, match="not an existing run directory"):
        make_run_dir(tmp_path, "cmo", "E", resume=tmp_path / "nope")
    with pytest.raises(ValueError, match="no run of 'cmo' on 'F'"):
        make_run_dir(tmp_path, "cmo", "F", resume="latest")


@pytest.mark.parametrize("env_id", ["", "a/b", "..", "x\\y"])
def test_make_run_dir_rejects_path_like_names(tmp_path, env_id):
    with pytest.raises(ValueError, match="env_id"):
        make_run_dir(tmp_path, "ppo_lag", env_id)


# -- the wide CSV ----------------------------------------------------------------------------


def test_csv_is_wide_merges_steps_and_extends_header(tmp_path):
    with RunLogger(tmp_path, backends=("csv",)) as logger:
        logger.log_scalars({"train/episode_return": 0.1 + 0.2, "time/sps": 7}, step=100)
        logger.log_scalars({"train/kl": torch.tensor(0.25)}, step=100)  # same step: merged
        logger.log_scalars({"train/episode_return": np.float32(2.5)}, step=200)
        logger.log_scalars({"eval/episode_cost": torch.tensor([3.0])}, step=300)  # new column
    rows = read_rows(tmp_path / "metrics.csv")
    assert rows == [
        ["step", "train/episode_return", "time/sps", "train/kl", "eval/episode_cost"],
        ["100", repr(0.1 + 0.2), "7", "0.25", ""],
        ["200", "2.5", "", "", ""],
        ["300", "", "", "", "3.0"],
    ]
    df = pd.read_csv(tmp_path / "metrics.csv", float_precision="round_trip")
    assert df["train/episode_return"].iloc[0] == 0.1 + 0.2  # full precision round trip
    assert np.isnan(df["eval/episode_cost"].iloc[0])


def test_csv_out_of_order_step_lands_in_its_row(tmp_path):
    with RunLogger(tmp_path, backends=("csv",)) as logger:
        for step in (10, 20, 30):
            logger.log_scalars({"train/a": float(step)}, step=step)
        logger.log_scalars({"train/a": -1.0}, step=20)
        logger.log_scalars({"train/a": 15.0}, step=15)
    rows = read_rows(tmp_path / "metrics.csv")
    assert rows[1:] == [["10", "10.0"], ["15", "15.0"], ["20", "-1.0"], ["30", "30.0"]]


def test_log_scalars_rejects_bad_input(tmp_path):
    with RunLogger(tmp_path, backends=("csv",)) as logger:
        with pytest.raises(ValueError, match="'train/v' must be a scalar, got 2 values"):
            logger.log_scalars({"train/v": torch.ones(2)}, step=1)
        with pytest.raises(ValueError, match="'train/v' must be a scalar, got 3 values"):
            logger.log_scalars({"train/v": np.ones(3)}, step=1)
        with pytest.raises(ValueError, match="step must be an integer >= 0"):
            logger.log_scalars({"train/v": 1.0}, step=-1)
        with pytest.raises(ValueError, match="step must be an integer"):
            logger.log_scalars({"train/v": 1.0}, step=1.5)
        with pytest.raises(ValueError, match="bad metric name 'step'"):
            logger.log_scalars({"step": 1.0}, step=1)
        with pytest.raises(ValueError, match="scalar number"):
            logger.log_scalars({"train/v": "high"}, step=1)
    with pytest.raises(ValueError, match="closed"):
        logger.log_scalars({"train/v": 1.0}, step=2)
    with pytest.raises(ValueError, match=r"unknown logger backend\(s\) \['wandb'\]"):
        RunLogger(tmp_path, backends=("csv", "wandb"))


def test_resume_drops_rows_after_resume_step(tmp_path):
    with RunLogger(tmp_path) as logger:
        for step in range(1, 6):
            logger.log_scalars({"train/x": float(step)}, step=step)
    with RunLogger(tmp_path, resume_step=3) as logger:
        for step in (4, 5, 6):
            logger.log_scalars({"train/x": 10.0 * step, "train/new": 1.0}, step=step)
    df = pd.read_csv(tmp_path / "metrics.csv")
    assert df["step"].tolist() == [1, 2, 3, 4, 5, 6]
    assert df["train/x"].tolist() == [1.0, 2.0, 3.0, 40.0, 50.0, 60.0]
    assert df["train/new"].isna().tolist() == [True] * 3 + [False] * 3
    # TensorBoard hides the pre-resume events after step 3 (purge_step = 4)
    assert tb_scalars(tmp_path, "train/x") == [
        (1, 1.0),
        (2, 2.0),
        (3, 3.0),
        (4, 40.0),
        (5, 50.0),
        (6, 60.0),
    ]


def test_reopen_drops_partial_last_line_and_keeps_appending(tmp_path):
    with RunLogger(tmp_path, backends=("csv",)) as logger:
        logger.log_scalars({"train/x": 1.0}, step=1)
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("2,2.")  # a hard kill in the middle of a row
    with RunLogger(tmp_path, backends=("csv",)) as logger:
        logger.log_scalars({"train/x": 3.0}, step=3)
    assert read_rows(tmp_path / "metrics.csv") == [["step", "train/x"], ["1", "1.0"], ["3", "3.0"]]


def test_tensorboard_receives_scalars(tmp_path):
    with RunLogger(tmp_path, backends=("tensorboard",)) as logger:
        logger.log_scalars({"train/lambda": 0.5}, step=10)
        logger.log_scalars({"train/lambda": torch.tensor(0.75)}, step=20)
    assert tb_scalars(tmp_path, "train/lambda") == [(10, 0.5), (20, 0.75)]
    assert not (tmp_path / "metrics.csv").exists()


def test_log_hparams_writes_resolved_config(tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"lr": 3e-4, "optim": {"lr": "${lr}", "betas": [0.9, 0.99]}})
    with RunLogger(tmp_path) as logger:
        logger.log_hparams(cfg)
    loaded = OmegaConf.load(tmp_path / "config.yaml")
    assert OmegaConf.to_container(loaded) == {
        "lr": 3e-4,
        "optim": {"lr": 3e-4, "betas": [0.9, 0.99]},
    }
    with RunLogger(tmp_path, resume_step=0) as logger:  # resuming keeps the original config
        logger.log_hparams({"lr": 1e-3})
    assert OmegaConf.load(tmp_path / "config.yaml").lr == 3e-4
    assert OmegaConf.load(tmp_path / "config.resume-1.yaml").lr == 1e-3
    with pytest.raises(ValueError, match="DictConfig or a mapping"):
        RunLogger(tmp_path / "x", backends=("csv",)).log_hparams([1, 2])


def test_progress_bar_counts_and_shows_latest_return_cost(tmp_path):
    with RunLogger(tmp_path, backends=("csv",), progress_total=1000, resume_step=100) as logger:
        logger.update(250)
        logger.log_scalars({"train/episode_return": 12.5, "train/episode_cost": 30.0}, step=350)
        assert logger.progress.n == 350
        assert logger.progress.postfix == "R=12.5, C=30"
    assert RunLogger(tmp_path / "quiet", backends=("csv",)).progress is None


def test_atexit_hook_is_per_logger(tmp_path):
    a = RunLogger(tmp_path / "a", backends=("csv",))
    b = RunLogger(tmp_path / "b", backends=("csv",))
    a.close()  # unregisters only a's hook
    assert not b._closed
    run_logging._close_at_exit(b._atexit.args[0])
    assert b._closed


# -- signals ---------------------------------------------------------------------------------


def test_deferred_signals_delivers_after_the_block():
    events = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
            events.append("block finished")
    assert events == ["block finished"]


def test_graceful_shutdown_raises_terminated_and_restores_handler():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as info:
        with graceful_shutdown():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1.0)
    assert info.value.signum == signal.SIGTERM
    assert exit_code_for(info.value) == 143
    assert signal.getsignal(signal.SIGTERM) is before
    with pytest.raises(ValueError, match="at least one signal"):
        with graceful_shutdown(signals=()):
            pass


def _spawn(script: str, tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for(proc: subprocess.Popen, marker: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if marker in line:
            return
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"child never printed {marker!r}: {proc.stderr.read()}")


@pytest.mark.parametrize(
    "signum, busy",
    [(signal.SIGTERM, False), (signal.SIGTERM, True), (signal.SIGINT, True)],
    ids=["sigterm-idle", "sigterm-busy", "sigint-busy"],
)
def test_signal_loses_no_logged_row(tmp_path, signum, busy):
    """Idle: the child logged steps 0..301 and waits. Busy: it keeps logging (new columns appear
    too) and the signal lands at a random row. Either way no logged row is lost or torn."""
    proc = _spawn(
        f"""
        import sys, time
        from cmo_rl.lifecycle.logging import RunLogger
        logger = RunLogger(sys.argv[1])
        step = 0
        while True:
            metrics = {{"train/episode_return": float(step)}}
            if step % 50 == 0:
                metrics[f"train/loss_{{step}}"] = 1.0  # header rewrite path
            logger.log_scalars(metrics, step=step)
            if step == 301:  # not a header-rewrite step
                print("ready", flush=True)
                if not {busy}:
                    time.sleep(600)
            step += 1
        """,
        tmp_path,
    )
    _wait_for(proc, "ready")
    time.sleep(0.2)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    rows = read_rows(tmp_path / "metrics.csv")
    header, body = rows[0], rows[1:]
    assert header[:2] == ["step", "train/episode_return"]
    if busy:
        assert len(body) > 302
    else:
        assert len(body) == 302
    assert [int(r[0]) for r in body] == list(range(len(body)))  # every row, in order
    assert all(len(r) == len(header) for r in body)
    assert [float(r[1]) for r in body] == [float(i) for i in range(len(body))]
    n_loss_columns = sum(h.startswith("train/loss_") for h in header)
    assert n_loss_columns == (len(body) - 1) // 50 + 1
    if signum == signal.SIGINT:  # KeyboardInterrupt: the atexit hook flushed TensorBoard too
        assert "KeyboardInterrupt" in err
        assert len(tb_scalars(tmp_path, "train/episode_return")) == len(body)
    else:
        assert proc.returncode == -signal.SIGTERM  # default action: killed, no cleanup ran


def test_graceful_shutdown_flushes_and_checkpoints_on_sigterm(tmp_path):
    proc = _spawn(
        """
        import sys, time, itertools
        from pathlib import Path
        from cmo_rl.lifecycle.checkpoint import checkpoint_path, save_checkpoint
        from cmo_rl.lifecycle import run_cli
        from cmo_rl.lifecycle.logging import RunLogger
        from cmo_rl.lifecycle.signals import deferred_signals, graceful_shutdown

        @run_cli
        def main(run_dir):
            logged = -1
            with graceful_shutdown(), RunLogger(run_dir, progress_total=None) as logger:
                try:
                    for step in itertools.count():
                        with deferred_signals():  # row and counter together: no SIGTERM between
                            logger.log_scalars({"train/episode_cost": 2.0 * step}, step=step)
                            logged = step
                        if step == 20:
                            print("ready", flush=True)
                        time.sleep(0.001)
                finally:
                    print("cleanup", flush=True)
                    time.sleep(0.5)  # a second SIGTERM arrives here and is ignored
                    save_checkpoint(checkpoint_path(run_dir, logged), {"step": logged})

        main(sys.argv[1])
        """,
        tmp_path,
    )
    _wait_for(proc, "ready")
    proc.send_signal(signal.SIGTERM)
    _wait_for(proc, "cleanup")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert "interrupted (SIGTERM); exiting" in err
    assert "SIGTERM received again while shutting down; ignored" in err
    from cmo_rl.lifecycle.checkpoint import latest_checkpoint, load_checkpoint

    last = load_checkpoint(latest_checkpoint(tmp_path))["step"]
    df = pd.read_csv(tmp_path / "metrics.csv")
    assert df["step"].iloc[-1] == last  # the final checkpoint matches the last logged row
    assert df["train/episode_cost"].tolist() == [2.0 * s for s in range(last + 1)]
    assert [s for s, _ in tb_scalars(tmp_path, "train/episode_cost")] == list(range(last + 1))
