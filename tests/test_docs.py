"""The docs cannot rot: the site (``mkdocs.yml``: the pages of ``docs/`` and the API reference
generated from the docstrings) builds with ``mkdocs build --strict`` without a single warning and
documents every module and public name, every relative link in ``docs/*.md`` and ``README.md``
reaches an existing file (and heading), and the index lists every page."""

from __future__ import annotations

import functools
import importlib
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md")) + [p for p in [ROOT / "README.md"] if p.exists()]
#: Pages that ``scripts/gen_ref_pages.py`` writes at build time (never committed): links into
#: them are checked by the strict build, not on disk.
GENERATED = DOCS / "reference"

_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"!?\[(?P<text>[^\]]*)\]\((?P<target><[^>]+>|[^)\s]+)(?:\s+\"[^\"]*\")?\)")
_REF_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*(?P<target>\S+)")
_INLINE_CODE = re.compile(r"(`+).*?\1")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading: lower case, punctuation dropped, spaces -> '-'.
    (The site's anchors are checked by the strict build: ``validation.anchors`` in mkdocs.yml.)"""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` outside fenced code blocks, with inline code removed."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, _INLINE_CODE.sub("", line)))
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """Every link target in a markdown file (inline and reference style), with its line."""
    found = []
    for number, line in _prose_lines(path.read_text()):
        for match in _LINK.finditer(line):
            found.append((number, match["target"].strip("<>")))
        ref = _REF_LINK.match(line)
        if ref:
            found.append((number, ref["target"]))
    return found


@functools.cache
def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a markdown file (duplicates get ``-1``, ``-2``, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose_lines_keep_code(path.read_text()):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            base = slug(heading.group(1).replace("`", ""))
            count = seen.get(base, 0)
            out.add(base if count == 0 else f"{base}-{count}")
            seen[base] = count + 1
        out.update(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", line))
    return out


def _prose_lines_keep_code(text: str) -> list[tuple[int, str]]:
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            out.append((number, line))
    return out


def test_slug_matches_github() -> None:
    assert slug("`cmo_rl.envs.safety`".replace("`", "")) == "cmo_rlenvssafety"
    assert slug("TensorDict keys") == "tensordict-keys"
    assert slug("Why cost is in the reward spec") == "why-cost-is-in-the-reward-spec"
    assert slug("The Python 3.11 import shim (`cmo_rl/envs/compat.py`)".replace("`", "")) == (
        "the-python-311-import-shim-cmo_rlenvscompatpy"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for number, target in links(page):
        if _SCHEME.match(target):
            continue  # http(s), mailto: not checked offline
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if dest.is_relative_to(GENERATED):
            continue  # the API reference exists only in the built site: test_site_builds_strict
        if not dest.exists():
            broken.append(f"{page.name}:{number}: {target} (no such file)")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{page.name}:{number}: {target} (no heading #{anchor})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_link_checker_sees_broken_links(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n[ok](#title) [bad](#nope) [file](missing.md) `[code](ignored.md)`\n"
        "```\n[fenced](ignored.md)\n```\n[ref]: other.md\n"
    )
    assert [t for _, t in links(page)] == ["#title", "#nope", "missing.md", "other.md"]
    assert anchors(page) == {"title"}


def test_index_links_every_page() -> None:
    index = DOCS / "index.md"
    linked = {
        (DOCS / t.partition("#")[0]).resolve()
        for _, t in links(index)
        if not _SCHEME.match(t) and t.partition("#")[0]
    }
    pages = {p.resolve() for p in DOCS.glob("*.md") if p.name != "index.md"}
    unlisted = sorted(p.name for p in pages - linked)
    assert not unlisted, f"docs/index.md does not link {unlisted}"


def _mkdocs_build(site_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DISABLE_MKDOCS_2_WARNING": "true", "NO_COLOR": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean"]
    command += ["--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(site_dir)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, list[str], str]:
    """``mkdocs build --strict`` once into a temporary folder (not site/): the folder, the exit
    status, the warning and error lines, and the whole output. mkdocs writes every page before it
    aborts on warnings, so the reference can be checked even when the strict build fails."""
    site_dir = tmp_path_factory.mktemp("site")
    result = _mkdocs_build(site_dir)
    output = result.stdout + result.stderr
    problems = [line for line in output.splitlines() if re.match(r"^(WARNING|ERROR)\b", line)]
    return site_dir, result.returncode, problems, output


def test_site_builds_strict(site: tuple[Path, int, list[str], str]) -> None:
    """``mkdocs build --strict`` passes without a single warning: no docstring griffe cannot parse,
    no broken link, page, heading or cross-reference, no page missing from the nav."""
    site_dir, returncode, problems, output = site
    if returncode != 0 or problems:
        shown = "\n".join(problems) or output[-4000:]
        pytest.fail(
            f"mkdocs build --strict failed (exit {returncode}) with {len(problems)} warnings/errors"
            f" (see docs/index.md, 'Building these docs'):\n{shown}",
            pytrace=False,
        )
    assert (site_dir / "index.html").is_file()
    assert (site_dir / "reference" / "index.html").is_file()


def _page(site: Path, module_name: str) -> Path:
    """The built reference page of ``module_name`` (mkdocs' directory URLs)."""
    parts = module_name.split(".")[1:]
    return site.joinpath("reference", *parts, "index.html")


def test_reference_documents_every_module_and_public_name(
    site: tuple[Path, int, list[str], str],
) -> None:
    """Every module ``import`` finds has a page, and every name of a module's ``__all__`` that the
    module defines itself has an entry on that page (re-exports are documented where defined)."""
    import cmo_rl

    site_dir = site[0]
    assert (site_dir / "reference" / "index.html").is_file(), site[3][-4000:]
    missing = []
    names = ["cmo_rl"] + [
        info.name
        for info in pkgutil.walk_packages(cmo_rl.__path__, "cmo_rl.")
        if info.name.rsplit(".", 1)[-1] != "__main__"
    ]
    for module_name in names:
        page = _page(site_dir, module_name)
        if not page.is_file():
            missing.append(f"{module_name}: no page {page.relative_to(site_dir)}")
            continue
        module = importlib.import_module(module_name)
        if hasattr(module, "__path__"):
            continue  # a package: its names are documented in the modules that define them
        html = page.read_text()
        for name in getattr(module, "__all__", ()):
            if f'id="{module_name}.{name}"' not in html:
                missing.append(f"{module_name}.{name}")
    assert not missing, "missing from the API reference:\n" + "\n".join(missing)
