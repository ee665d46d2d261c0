"""Atomic checkpoints: round trip, RNG continuity, and clear errors that leave the run dir alone."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from cmo_rl.lifecycle import checkpoint as ckpt
from cmo_rl.lifecycle.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    capture_rng_state,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
    verify_checkpoint,
)


class Custom:
    """An arbitrary picklable object (refused by ``weights_only=True``)."""


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``directory``: its bytes and mtime."""
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def draws() -> tuple:
    return (
        random.random(),
        np.random.rand(3).tolist(),  # noqa: NPY002 (the global RNG is what is restored)
        np.random.randn(),  # noqa: NPY002  (exercises numpy's cached Gaussian)
        torch.rand(3).tolist(),
        torch.randn(2).tolist(),
    )


def make_state() -> dict:
    module = torch.nn.Linear(3, 2)
    return {
        "step": 4096,
        "policy": module.state_dict(),
        "optimizer": torch.optim.Adam(module.parameters()).state_dict(),
        "config": {"lr": 3e-4, "env_ids": ["SafetyPointGoal1-v0"]},
        "lagrange_multiplier": torch.tensor(0.25),
        "rng": capture_rng_state(),
    }


def test_round_trip_and_rng_continuity(tmp_path):
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002
    random.seed(0)
    np.random.randn()  # noqa: NPY002  leaves a cached Gaussian in the state
    state = make_state()
    expected = draws()  # what the run would have drawn next
    path = save_checkpoint(checkpoint_path(tmp_path, 4096), state)
    assert path == tmp_path / "checkpoints" / "step_000000004096.pt"
    draws()  # move every RNG on
    loaded = load_checkpoint(path)
    assert loaded["step"] == 4096 and loaded["config"] == state["config"]
    for key, value in state["policy"].items():
        assert torch.equal(loaded["policy"][key], value)
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    assert torch.equal(loaded["lagrange_multiplier"], torch.tensor(0.25))
    restore_rng_state(loaded["rng"])
    assert draws() == expected
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_file_format_header(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"step": 1})
    data = path.read_bytes()
    magic, header, payload = data.split(b"\n", 2)
    meta = json.loads(header)
    assert magic == b"CMORL-CHECKPOINT"
    assert meta["format_version"] == FORMAT_VERSION == 1
    assert meta["payload_bytes"] == len(payload)
    assert meta["sha256"] == hashlib.sha256(payload).hexdigest()


def test_save_overwrites_atomically_and_cleans_up_on_failure(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "c.pt", {"step": 1})
    original = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2})
    assert path.read_bytes() == original  # the old checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # temp file removed
    monkeypatch.undo()
    save_checkpoint(path, {"step": 2})
    assert load_checkpoint(path)["step"] == 2
    with pytest.raises(ValueError, match="must be a mapping"):
        save_checkpoint(path, [1, 2])


def _corrupt(kind: str, path: Path) -> None:
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) - 10])
    elif kind == "truncated-header":
        path.write_bytes(data[:20])
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(len(data)))
    elif kind == "bitflip":
        i = len(data) - 5
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :])
    elif kind == "wrong-version":
        magic, header, payload = data.split(b"\n", 2)
        meta = {**json.loads(header), "format_version": 99}
        path.write_bytes(magic + b"\n" + json.dumps(meta).encode() + b"\n" + payload)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "plain-torch-save":
        torch.save({"step": 1}, path)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("truncated", r"truncated: \d+ of \d+ payload bytes present"),
        ("truncated-header", "truncated inside the header"),
        ("random", r"not a cmo_rl checkpoint \(bad magic bytes\)"),
        ("bitflip", "corrupt: SHA-256 checksum mismatch"),
        ("wrong-version", "format version 99, but this cmo_rl reads version 1"),
        ("empty", "truncated: only 0 bytes"),
        ("plain-torch-save", "not a cmo_rl checkpoint"),
    ],
)
def test_bad_files_raise_clear_errors_and_touch_nothing(tmp_path, kind, message):
    run_dir = tmp_path / "run"
    good = save_checkpoint(checkpoint_path(run_dir, 10), make_state())
    bad = save_checkpoint(checkpoint_path(run_dir, 20), make_state())
    (run_dir / "metrics.csv").write_text("step\n10\n20\n")
    _corrupt(kind, bad)
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(bad)
    assert str(bad) in str(info.value) and info.value.path == bad
    with pytest.raises(CheckpointError, match=message):
        verify_checkpoint(bad)
    with pytest.warns(RuntimeWarning, match="skipping invalid checkpoint"):
        assert latest_checkpoint(run_dir) == good  # falls back to the previous good one
    assert latest_checkpoint(run_dir, verify=False) == bad
    assert snapshot(run_dir) == before


def test_missing_and_unpicklable(tmp_path):
    with pytest.raises(CheckpointError, match=r"c\.pt: no such file"):
        load_checkpoint(tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint(tmp_path)

    path = save_checkpoint(tmp_path / "obj.pt", {"thing": Custom()})
    with pytest.raises(CheckpointError, match="cannot be unpickled"):
        load_checkpoint(path)  # weights_only=True refuses arbitrary objects
    assert isinstance(load_checkpoint(path, weights_only=False)["thing"], Custom)


def test_latest_and_prune(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for step in (5, 100, 20):
        save_checkpoint(checkpoint_path(tmp_path, step), {"step": step})
    (tmp_path / "checkpoints" / ".step_000000000200.pt.tmp123").write_bytes(b"partial")
    (tmp_path / "checkpoints" / "notes.txt").write_text("not a checkpoint")
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 100
    removed = prune_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in removed] == ["step_000000000005.pt"]
    left = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.suffix == ".pt")
    assert left == ["step_000000000020.pt", "step_000000000100.pt"]
    with pytest.raises(ValueError, match="keep_last must be >= 1"):
        prune_checkpoints(tmp_path, keep_last=0)
    with pytest.raises(ValueError, match="step must be >= 0"):
        checkpoint_path(tmp_path, -1)


def test_rng_state_survives_map_location_and_validates(tmp_path):
    state = capture_rng_state()
    assert set(state) >= {"python", "numpy", "torch"}
    assert ("torch_cuda" in state) == torch.cuda.is_available()
    path = save_checkpoint(tmp_path / "rng.pt", {"rng": state})
    loaded = load_checkpoint(path, map_location=torch.device("cpu"))["rng"]
    expected = draws()
    restore_rng_state(loaded)
    assert draws() == expected
    with pytest.raises(ValueError, match=r"lacks \['numpy'\]"):
        restore_rng_state({"python": state["python"], "torch": state["torch"]})


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_and_map_location(tmp_path):
    state = capture_rng_state()
    expected = torch.rand(4, device="cuda").tolist()
    path = save_checkpoint(tmp_path / "rng.pt", {"rng": state, "w": torch.ones(2, device="cuda")})
    torch.rand(4, device="cuda")
    loaded = load_checkpoint(path, map_location="cuda")
    assert loaded["w"].is_cuda and loaded["rng"]["torch"].is_cuda  # moved by map_location
    restore_rng_state(loaded["rng"])  # copies back to CPU where torch needs it
    assert torch.rand(4, device="cuda").tolist() == expected
    assert os.path.exists(path)
