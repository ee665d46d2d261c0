"""Regenerate the doc tables that ``cmo`` prints: run each documented command, paste its output.

A measured table in a Markdown file (``docs/*.md``, ``README.md``) is a block between two
marker comments whose fenced code starts with the command, then what the command prints:

    <!-- cmo-table:start lstm -->
    ```text
    $ ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 cmo preset=quick
    return, cost: one fresh batch of the final policy ...
    ...the meta-test table...
    ```
    <!-- cmo-table:end lstm -->

The printed part is the run's ``meta_test.txt`` (the same text ``cmo`` prints at the end) without
its lines that hold wall-clock seconds (the first one, ``meta-test after 20 meta-iterations
(112 s): ...``), so a block is a contiguous, verbatim piece of the command's stdout.
``tests/test_quick_preset.py`` reruns every block's command and checks exactly that.

A command may start with ``VAR=value`` words, as in a shell: they are set in the environment of
its run (over the inherited one). The documented commands use them to pin the arithmetic, so
that a table reproduces on any x86-64 machine with AVX2, not only on the one that made it:
``ATEN_CPU_CAPABILITY=avx2`` (torch's own vector kernels) and ``MKL_ENABLE_INSTRUCTIONS=AVX2``
(MKL's); without them an AVX-512 machine takes other kernels and prints slightly different
numbers (docs/configuration.md, ``preset=quick``).

Seconds are measured but never compared: a file may hold one timing block, rewritten with the
wall and CPU seconds of every block's run and the machine they ran on:

    <!-- cmo-timing:start -->
    <!-- cmo-timing:end -->

Usage (the commands run one after another, each in a fresh temporary working directory, so
``runs/`` lands there; ``cmo`` is the console script beside this interpreter)::

    python scripts/doc_tables.py                # run every block's command, rewrite the blocks
    python scripts/doc_tables.py --only pid     # only the block(s) of that name (timing kept)
    python scripts/doc_tables.py --check        # run and compare; write nothing, exit 1 on a diff
    python scripts/doc_tables.py --keep /tmp/r  # keep the run directories under /tmp/r
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import os
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
#: the files searched for blocks when none are named
DEFAULT_FILES = (*sorted((REPO / "docs").glob("*.md")), REPO / "README.md")

BLOCK_RE = re.compile(
    r"(?P<open><!-- cmo-table:start (?P<name>[\w.-]+) -->\n)"
    r"(?P<body>.*?)"
    r"(?P<close><!-- cmo-table:end (?P=name) -->)",
    re.S,
)
TIMING_RE = re.compile(r"(<!-- cmo-timing:start -->\n)(.*?)(<!-- cmo-timing:end -->)", re.S)
#: a wall-clock mention in cmo's output, e.g. "(112 s)": such lines are never part of a block
SECONDS_RE = re.compile(r"\(\d+(?:\.\d+)? s\)")
FENCE = "```text"
#: an environment assignment before the program, as a shell reads it: ``NAME=value``
ASSIGNMENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


class Block(NamedTuple):
    """One measured table: where it is, its name, the documented command and its output."""

    path: Path
    name: str
    command: str  #: as documented, e.g. "ATEN_CPU_CAPABILITY=avx2 cmo preset=quick"
    expected: str  #: the documented output (lines joined by "\n", no trailing newline)


def parse_blocks(text: str, path: Path) -> list[Block]:
    """The ``cmo-table`` blocks of a Markdown text.

    >>> text = "x\\n<!-- cmo-table:start a -->\\n```text\\n$ cmo seed=1\\nt  u\\n1  2\\n```\\n"
    >>> text += "<!-- cmo-table:end a -->\\n"
    >>> [(b.name, b.command, b.expected) for b in parse_blocks(text, Path("f.md"))]
    [('a', 'cmo seed=1', 't  u\\n1  2')]
    >>> parse_blocks(text.replace("$ cmo", "$ X=1 cmo"), Path("f.md"))[0].command
    'X=1 cmo seed=1'
    """
    blocks = []
    for m in BLOCK_RE.finditer(text):
        lines = m["body"].rstrip("\n").split("\n")
        where = f"{path}: block {m['name']!r}"
        if len(lines) < 3 or lines[0] != FENCE or lines[-1] != "```":
            raise ValueError(f"{where}: expected {FENCE!r}, '$ cmo ...', the output, '```'")
        if not lines[1].startswith("$ "):
            raise ValueError(f"{where}: the first line must be the command ('$ cmo ...')")
        try:
            split_command(lines[1][2:])
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        blocks.append(Block(path, m["name"], lines[1][2:].strip(), "\n".join(lines[2:-1])))
    return blocks


def find_blocks(files: list[Path] | tuple[Path, ...] = DEFAULT_FILES) -> list[Block]:
    """Every block of ``files`` (default: ``docs/*.md`` and ``README.md``)."""
    return [b for f in files if f.exists() for b in parse_blocks(f.read_text(), f)]


def render_block(command: str, output: str) -> str:
    """The body of a block (between its markers)."""
    return f"{FENCE}\n$ {command}\n{output}\n```\n"


def split_command(command: str) -> tuple[dict[str, str], list[str]]:
    """A documented command's ``VAR=value`` prefix (as a shell reads it) and its ``cmo ...`` words.

    >>> split_command("ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 cmo preset=quick")
    ({'ATEN_CPU_CAPABILITY': 'avx2', 'MKL_ENABLE_INSTRUCTIONS': 'AVX2'}, ['cmo', 'preset=quick'])
    >>> split_command("cmo seed=7")  # an override after cmo is an argument, not the environment
    ({}, ['cmo', 'seed=7'])
    """
    words = shlex.split(command)
    env: dict[str, str] = {}
    while words and ASSIGNMENT_RE.match(words[0]):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    if not words or words[0] != "cmo":
        raise ValueError(f"not a cmo command ('[VAR=value ...] cmo ...'): {command!r}")
    return env, words


def argv_of(command: str) -> list[str]:
    """The argument vector of a documented ``[VAR=value ...] cmo ...`` command: the ``cmo``
    console script beside this interpreter, or, where there is none, ``python
    recipes/meta_train.py`` (the same program); the prefix goes to :func:`run_env`."""
    words = split_command(command)[1]
    script = Path(sys.executable).with_name("cmo")
    program = (
        [str(script)]
        if script.exists()
        else [sys.executable, str(REPO / "recipes" / "meta_train.py")]
    )
    return program + words[1:]


def run_env(command: str = "cmo") -> dict[str, str]:
    """The environment of a documented run: this one, without Hydra's full-traceback switch, with
    the command's ``VAR=value`` prefix set over it (as a shell would)."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(split_command(command)[0])
    return env


def printed_table(meta_test_txt: str) -> str:
    """``meta_test.txt`` without its wall-clock lines: the part of the output a block holds.

    >>> printed_table("meta-test after 2 meta-iterations (11 s): ...\\nmu = 10\\n\\ntask  x\\nT  1\\n")
    'mu = 10\\n\\ntask  x\\nT  1'
    """
    return "\n".join(
        line for line in meta_test_txt.rstrip("\n").split("\n") if not SECONDS_RE.search(line)
    )


class Measured(NamedTuple):
    """A documented command's run: its printed table and how long it took."""

    command: str
    table: str
    wall_s: float
    cpu_s: float  #: user + system time of the program (and its children)
    train_s: float | None  #: meta-training (``time/total`` of the last metrics.csv row)
    test_s: float | None  #: meta-test (the seconds in meta_test.txt's first line)
    run_dir: Path


def run_block(command: str, workdir: Path, timeout: float = 3600) -> Measured:
    """Run ``command`` (as documented) in ``workdir`` and read what it printed and measured."""
    workdir.mkdir(parents=True, exist_ok=True)
    earlier = set(workdir.rglob("meta_test.txt"))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(
        argv_of(command),
        cwd=workdir,
        env=run_env(command),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if out.returncode != 0:
        raise RuntimeError(f"`{command}` failed ({out.returncode}):\n{out.stderr[-3000:]}")
    found = sorted(set(workdir.rglob("meta_test.txt")) - earlier)
    if len(found) != 1:
        raise RuntimeError(f"`{command}`: expected one meta_test.txt under {workdir}, got {found}")
    run_dir = found[0].parent
    text = found[0].read_text()
    table = printed_table(text)
    if table not in out.stdout:
        raise RuntimeError(f"`{command}`: meta_test.txt is not what it printed")
    seconds = SECONDS_RE.search(text)
    test_s = float(seconds[0][1:-3]) if seconds else None
    train_s = None
    metrics = run_dir / "metrics.csv"
    if metrics.exists():
        import csv

        rows = list(csv.DictReader(metrics.open()))
        if rows and rows[-1].get("time/total"):
            train_s = float(rows[-1]["time/total"])
    return Measured(command, table, wall, cpu, train_s, test_s, run_dir)


def machine() -> str:
    """The CPU model, core count and torch build (numbers depend on them), with the vector
    kernels torch picks here unless a command's prefix pins others."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"{model}, {os.cpu_count()} cores"]
    try:
        import torch

        parts.append(
            f"torch {torch.__version__} (native {torch.backends.cpu.get_cpu_capability()} "
            "kernels; a command's prefix pins its own)"
        )
    except Exception:  # noqa: BLE001 (the description is best effort)
        pass
    return ", ".join(parts)


def render_timing(results: list[Measured]) -> str:
    """The body of a timing block."""
    today = dt.date.today().isoformat()
    lines = [
        f"Measured by `python scripts/doc_tables.py` on {today}, one run after the other on "
        f"{machine()}; the seconds are not part of the compared tables:",
        "",
    ]
    for r in results:
        split = ""
        if r.train_s is not None and r.test_s is not None:
            split = f" (meta-training {r.train_s:.0f} s, meta-test {r.test_s:.0f} s)"
        lines.append(f"* `{r.command}`: **{r.wall_s:.0f} s** wall{split}, {r.cpu_s:.0f} s CPU")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "files", nargs="*", type=Path, help="Markdown files (default: docs, README)"
    )
    parser.add_argument("--only", action="append", help="block name(s) to rerun (default: all)")
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on a diff")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep the run directories")
    args = parser.parse_args(argv)
    files = [f.resolve() for f in args.files] or list(DEFAULT_FILES)
    blocks = [b for b in find_blocks(files) if not args.only or b.name in args.only]
    if not blocks:
        print("no cmo-table blocks found", file=sys.stderr)
        return 2
    root = args.keep or Path(tempfile.mkdtemp(prefix="doc_tables_"))
    measured: dict[tuple[Path, str], Measured] = {}
    differs = False
    for i, block in enumerate(blocks):
        print(
            f"[{i + 1}/{len(blocks)}] {block.path.name} {block.name}: $ {block.command}", flush=True
        )
        result = run_block(block.command, root / f"{block.path.stem}-{block.name}")
        measured[(block.path, block.name)] = result
        print(f"    {result.wall_s:.0f} s wall, {result.cpu_s:.0f} s CPU; run: {result.run_dir}")
        if result.table != block.expected:
            differs = True
            diff = difflib.unified_diff(
                block.expected.split("\n"),
                result.table.split("\n"),
                "documented",
                "printed",
                lineterm="",
            )
            print("\n".join(diff))
        else:
            print("    the documented table is what it printed")
    if args.check:
        return 1 if differs else 0
    for path in sorted({b.path for b in blocks}):
        text = path.read_text()

        def replace(m: re.Match, path: Path = path) -> str:
            result = measured.get((path, m["name"]))
            if result is None:
                return m[0]
            return (
                m["open"]
                + render_block(parse_blocks(m[0], path)[0].command, result.table)
                + m["close"]
            )

        new = BLOCK_RE.sub(replace, text)
        file_results = [r for (p, _), r in measured.items() if p == path]
        all_run = {b.name for b in find_blocks([path])} == {n for (p, n) in measured if p == path}
        if all_run:
            timing = render_timing(file_results)
            new = TIMING_RE.sub(lambda m, t=timing: m[1] + t + m[3], new)
        else:
            print(f"{path.name}: not every block was rerun, its timing block is left as it was")
        if new != text:
            path.write_text(new)
            print(f"rewrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
