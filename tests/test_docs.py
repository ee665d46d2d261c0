"""The docs cannot rot: ``docs/api.md`` is what ``docs/build_api.py`` writes today, every relative
link in ``docs/*.md`` and ``README.md`` reaches an existing file (and heading), and the index
lists every page."""

from __future__ import annotations

import difflib
import functools
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md")) + [p for p in [ROOT / "README.md"] if p.exists()]

_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"!?\[(?P<text>[^\]]*)\]\((?P<target><[^>]+>|[^)\s]+)(?:\s+\"[^\"]*\")?\)")
_REF_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*(?P<target>\S+)")
_INLINE_CODE = re.compile(r"(`+).*?\1")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


@functools.cache
def _load_builder():
    spec = importlib.util.spec_from_file_location("build_api", DOCS / "build_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    builder = _load_builder()
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose_lines_keep_code(path.read_text()):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            base = builder.slug(heading.group(1).replace("`", ""))
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
    slug = _load_builder().slug
    assert slug("`cmo_rl.envs.safety`".replace("`", "")) == "cmo_rlenvssafety"
    assert slug("TensorDict keys") == "tensordict-keys"
    assert slug("Why cost is in the reward spec") == "why-cost-is-in-the-reward-spec"
    assert slug("The Python 3.11 import shim (`cmo_rl/envs/compat.py`)".replace("`", "")) == (
        "the-python-311-import-shim-cmo_rlenvscompatpy"
    )


def test_api_reference_is_up_to_date() -> None:
    committed = (DOCS / "api.md").read_text()
    fresh = _load_builder().render()
    if committed != fresh:
        diff = difflib.unified_diff(
            committed.splitlines(), fresh.splitlines(), "docs/api.md", "regenerated", lineterm=""
        )
        shown = "\n".join(list(diff)[:60])
        pytest.fail(f"docs/api.md is out of date: run `python docs/build_api.py`\n{shown}")


def test_api_reference_covers_every_public_name() -> None:
    import importlib

    builder = _load_builder()
    text = (DOCS / "api.md").read_text()
    for module_name in builder.module_names():
        module = importlib.import_module(module_name)
        assert f"## `{module_name}`" in text
        for name in getattr(module, "__all__", ()):
            assert f"`{name}`" in text, f"{module_name}.{name} is missing from docs/api.md"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for number, target in links(page):
        if _SCHEME.match(target):
            continue  # http(s), mailto: not checked offline
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
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
