"""Generate the API reference pages at ``mkdocs build`` time (the mkdocs-gen-files plugin runs it).

One page per module of the ``cmo_rl`` package, found by walking ``cmo_rl/`` on disk, so a module
that is added, moved or renamed needs no edit here or in ``mkdocs.yml``. Each page is a single
mkdocstrings directive (``::: cmo_rl.some.module``) that renders the module's docstrings; the
navigation is written as ``reference/SUMMARY.md`` for mkdocs-literate-nav. Nothing is written to
the source tree: the pages exist only inside the build. This is the "automatic code reference
pages" recipe of mkdocstrings.
"""

from __future__ import annotations

from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "cmo_rl"

nav = mkdocs_gen_files.Nav()


def _modules(package: Path) -> list[Path]:
    """The ``.py`` files of ``package`` and of its subpackages, as ``import`` sees them: only
    folders with an ``__init__.py`` are packages (what ``pkgutil.walk_packages`` walks)."""
    found = []
    for path in sorted(package.iterdir()):
        if path.is_dir() and (path / "__init__.py").is_file():
            found += _modules(path)
        elif path.suffix == ".py":
            found.append(path)
    return found


for path in _modules(ROOT / PACKAGE):
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__main__" or any(p.startswith("_") and p != "__init__" for p in parts):
        continue  # entry points and private modules are not part of the API
    doc_path = Path(*parts[1:]).with_suffix(".md")  # cmo_rl/envs/safety.py -> envs/safety.md
    if parts[-1] == "__init__":  # a package: cmo_rl/envs/__init__.py -> envs/index.md
        parts = parts[:-1]
        doc_path = doc_path.with_name("index.md")
    nav[parts] = doc_path.as_posix()
    with mkdocs_gen_files.open(Path("reference", doc_path), "w") as page:
        page.write(f"::: {'.'.join(parts)}\n")
    mkdocs_gen_files.set_edit_path(Path("reference", doc_path), path.relative_to(ROOT))

with mkdocs_gen_files.open("reference/SUMMARY.md", "w") as summary:
    summary.writelines(nav.build_literate_nav())
