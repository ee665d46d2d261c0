"""The measured tables of the docs are what ``cmo`` prints today.

A ``cmo-table`` block (docs/configuration.md: ``cmo preset=quick`` and its PID twin) holds a
documented command and the meta-test table it printed; ``scripts/doc_tables.py`` writes the
blocks from a run. The slow test runs each command exactly as the doc writes it (its
``VAR=value`` prefix set in the environment, the ``cmo`` console script, the doc's arguments and
nothing else, in a fresh working directory, so the defaults apply: ``seed`` 123) and requires
its stdout to contain the documented table verbatim. About 4 minutes per table on 2 cores.

The numbers are bit-reproducible on one machine and software; across CPUs torch and MKL pick
other vector kernels, which changes them. The documented commands pin those kernels to AVX2
(the ``PIN`` prefix below), so the tables should hold on any x86-64 machine with AVX2 and the
same torch build, AVX-512 ones included; MKL guarantees that only for Intel CPUs
(docs/configuration.md, "Same seed, same numbers").
"""

from __future__ import annotations

import difflib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "configuration.md"
#: the environment prefix of the documented commands: torch's and MKL's kernels at AVX2
PIN = "ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2"


def _load_doc_tables():
    spec = importlib.util.spec_from_file_location("doc_tables", REPO / "scripts" / "doc_tables.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("doc_tables", module)
    spec.loader.exec_module(module)
    return module


doc_tables = _load_doc_tables()
BLOCKS = doc_tables.find_blocks()


def _documented_seed() -> int:
    found = re.search(r"`seed` (\d+), the default", DOC.read_text())
    assert found, "docs/configuration.md no longer says which seed preset=quick runs with"
    return int(found[1])


def test_the_quick_preset_tables_are_in_the_docs():
    mine = {b.command: b for b in BLOCKS if b.path == DOC}
    lstm, pid = f"{PIN} cmo preset=quick", f"{PIN} cmo preset=quick meta_optimizer_type=pid"
    assert set(mine) >= {lstm, pid}
    for block in BLOCKS:
        assert "change" in block.expected and "task" in block.expected, block.name
        # wall-clock seconds differ between runs: never part of a compared table
        assert not doc_tables.SECONDS_RE.search(block.expected), block.name
        # a table made with the machine's own kernels would hold on that machine kind only
        env = doc_tables.split_command(block.command)[0]
        assert env.items() >= doc_tables.split_command(f"{PIN} cmo")[0].items(), block.name
    assert "PID gains, initial -> learned" in mine[pid].expected
    _documented_seed()


def test_a_commands_prefix_is_its_environment(monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    command = f"{PIN} cmo preset=quick seed=7"
    assert doc_tables.argv_of(command)[-2:] == ["preset=quick", "seed=7"]
    env = doc_tables.run_env(command)
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["MKL_ENABLE_INSTRUCTIONS"] == "AVX2"
    assert "HYDRA_FULL_ERROR" not in env and "seed" not in env
    assert doc_tables.run_env("cmo preset=quick")["ATEN_CPU_CAPABILITY"] == "avx512"
    with pytest.raises(ValueError, match="not a cmo command"):
        doc_tables.split_command("X=1 python -c pass")


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{b.path.stem}-{b.name}")
def test_the_documented_command_prints_the_documented_table(block, tmp_path):
    out = subprocess.run(
        doc_tables.argv_of(block.command),
        cwd=tmp_path,
        env=doc_tables.run_env(block.command),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    if "seed=" not in block.command:  # the documented default seed
        (config,) = tmp_path.rglob("config.yaml")
        assert f"\nseed: {_documented_seed()}\n" in f"\n{config.read_text()}", config
    if block.expected not in out.stdout:
        expected = block.expected.split("\n")
        printed = out.stdout.rstrip("\n").split("\n")[-len(expected) :]  # the table ends it
        diff = "\n".join(
            difflib.unified_diff(
                expected,
                printed,
                "documented",
                "printed",
                lineterm="",
            )
        )
        pytest.fail(
            f"`{block.command}` no longer prints the table of {block.path.name} "
            f"({block.name!r}); rerun `python scripts/doc_tables.py` and update the prose, "
            f"unless this machine lacks AVX2 or runs another torch/MKL build (see the doc):\n{diff}"
        )
