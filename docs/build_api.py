"""Write ``docs/api.md``, the API reference, from the package's docstrings.

    python docs/build_api.py           # (re)write docs/api.md
    python docs/build_api.py --check   # exit 1 if docs/api.md is not what this would write

One section per module of ``cmo_rl`` (in import-path order): the module docstring, then each
name of its ``__all__`` that it defines, with its signature and docstring (classes also list
their public documented methods and properties). A package's section names what it re-exports
and where each name is defined. The output depends only on the source (no addresses, no
timestamps), so ``tests/test_docs.py`` can check that the committed file is up to date.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import pkgutil
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "api.md"
PACKAGE = "cmo_rl"

HEADER = """\
# API reference

Generated from the docstrings by `python docs/build_api.py`: do not edit by hand
(`tests/test_docs.py` fails when this file is out of date). Docstrings use reST markup
(` ``code`` `, `:func:`, `.. math::`); every `>>>` example runs in `tests/test_doctests.py`.
The tensordict keys every component reads and writes are in [design.md](design.md#tensordict-keys).
"""


def module_names(package: str = PACKAGE) -> list[str]:
    """``package`` and all its submodules (no ``__main__``), sorted."""
    root = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(root.__path__, f"{package}."):
        if info.name.rsplit(".", 1)[-1] != "__main__":
            names.append(info.name)
    return sorted(names)


def slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading: lower case, punctuation dropped, spaces -> '-'."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _annotation(annotation: Any) -> str:
    if isinstance(annotation, str):  # postponed evaluation (from __future__ import annotations)
        return annotation
    return inspect.formatannotation(annotation)


def _default(value: Any) -> str:
    if isinstance(value, Path) and value.is_absolute():
        # Absolute paths depend on where the checkout lives; show them from the package's parent.
        root = Path(__file__).resolve().parent.parent
        with contextlib.suppress(ValueError):
            return f"Path('{value.relative_to(root).as_posix()}')  # inside the installed package"
    text = repr(value)
    if re.search(r"0x[0-9a-fA-F]+", text) or len(text) > 60:
        return "..."  # object reprs carry addresses; long containers drown the signature
    return text


def signature(obj: Any) -> str | None:
    """``(a: int, b: float = 1.0) -> str``, with annotations as written in the source."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    parts = []
    seen_kw_only = False
    previous_kind = None
    for param in sig.parameters.values():
        if param.kind is param.KEYWORD_ONLY and not seen_kw_only:
            if previous_kind is not param.VAR_POSITIONAL:
                parts.append("*")
            seen_kw_only = True
        if previous_kind is param.POSITIONAL_ONLY and param.kind is not param.POSITIONAL_ONLY:
            parts.append("/")
        text = param.name
        if param.kind is param.VAR_POSITIONAL:
            text = f"*{text}"
        elif param.kind is param.VAR_KEYWORD:
            text = f"**{text}"
        if param.annotation is not param.empty:
            text += f": {_annotation(param.annotation)}"
        if param.default is not param.empty:
            sep = " = " if param.annotation is not param.empty else "="
            text += f"{sep}{_default(param.default)}"
        parts.append(text)
        previous_kind = param.kind
    if previous_kind is inspect.Parameter.POSITIONAL_ONLY:
        parts.append("/")
    out = f"({', '.join(parts)})"
    if sig.return_annotation is not sig.empty and not inspect.isclass(obj):
        out += f" -> {_annotation(sig.return_annotation)}"
    return out


def _fence(text: str, lang: str = "") -> list[str]:
    fence = "~~~" if "```" in text else "```"
    return [f"{fence}{lang}", *text.splitlines(), fence]


def _doc(obj: Any) -> str:
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if doc else ""


def _kind(obj: Any) -> str:
    if inspect.isclass(obj):
        return "class"
    if inspect.isroutine(obj):
        return "function"
    return "constant"


def _members(cls: type) -> list[tuple[str, Any]]:
    """Public methods and properties defined (and documented) in ``cls`` itself."""
    out = []
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        func = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
        if isinstance(member, property) or inspect.isfunction(func):
            if _doc(func if not isinstance(member, property) else member):
                out.append((name, member))
    return out


def _render_object(module_name: str, name: str, obj: Any) -> list[str]:
    kind = _kind(obj)
    lines = [f"### `{name}`", ""]
    if kind == "constant":
        value = _default(obj)
        lines += _fence(f"{name}: {type(obj).__name__} = {value}", "python")
        return [*lines, ""]
    sig = signature(obj)
    head = "class" if kind == "class" else "def"
    lines += _fence(f"{head} {name}{sig if sig is not None else ''}", "python")
    doc = _doc(obj)
    if doc:
        lines += ["", *_fence(doc, "text")]
    if kind == "class":
        for member_name, member in _members(obj):
            if isinstance(member, property):
                lines += ["", f"- property `{name}.{member_name}`", ""]
                lines += [f"  {line}" if line else "" for line in _doc(member).splitlines()]
                continue
            func = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
            prefix = "classmethod " if isinstance(member, classmethod) else ""
            msig = signature(func) or "(...)"
            if not isinstance(member, staticmethod):
                msig = re.sub(r"^\((self|cls)(, )?", "(", msig)
            lines += ["", f"- {prefix}`{name}.{member_name}{msig}`", ""]
            lines += [f"  {line}" if line else "" for line in _doc(func).splitlines()]
    return [*lines, ""]


def _homes(modules: dict[str, Any]) -> dict[tuple[str, int], str]:
    """``(name, id(obj)) -> defining module`` for every name a non-package module exports."""
    homes: dict[tuple[str, int], str] = {}
    for name, module in modules.items():
        if hasattr(module, "__path__"):
            continue
        for attr in getattr(module, "__all__", ()):
            homes.setdefault((attr, id(getattr(module, attr))), name)
    return homes


def render() -> str:
    """The whole of ``docs/api.md``."""
    modules = {name: importlib.import_module(name) for name in module_names()}
    homes = _homes(modules)
    out = [HEADER, "", "## Modules", ""]
    for name, module in modules.items():
        summary = (_doc(module).splitlines() or [""])[0]
        out.append(f"- [`{name}`](#{slug(f'`{name}`')}): {summary}")
    out.append("")
    for name, module in modules.items():
        out += [f"## `{name}`", ""]
        doc = _doc(module)
        if doc:
            out += [*_fence(doc, "text"), ""]
        public = list(getattr(module, "__all__", ()))
        if hasattr(module, "__path__"):
            rows = []
            for attr in public:
                obj = getattr(module, attr)
                home = obj.__name__ if inspect.ismodule(obj) else homes.get((attr, id(obj)))
                if home is None or home == name:
                    rows.append((attr, obj))
                    continue
                target = f"[`{home}`](#{slug(f'`{home}`')})"
                out.append(
                    f"- `{attr}` ({_kind(obj) if not inspect.ismodule(obj) else 'module'}): {target}"
                )
            if len(rows) < len(public):
                out.append("")
            for attr, obj in rows:
                out += _render_object(name, attr, obj)
            continue
        for attr in public:
            obj = getattr(module, attr)
            out += _render_object(name, attr, obj)
    text = "\n".join(line.rstrip() for line in out)
    return re.sub(r"\n{3,}", "\n\n", text).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUT.read_text() if OUT.exists() else ""
        if current != text:
            print(f"{OUT} is out of date: run python docs/build_api.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # the checkout's cmo_rl, whatever is installed
    raise SystemExit(main())
