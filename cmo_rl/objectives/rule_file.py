"""Rule files: a learned rule's shape, meta-parameters and provenance in one ``torch`` file.

The learned dual rule (:mod:`cmo_rl.pretrained`) and the learned primal rule
(:mod:`cmo_rl.objectives.learned_primal`) are stored the same way: a dict with a ``format``
tag, the constructor ``config``, the ``parameters`` and a ``provenance`` record (command,
tasks, budget, commit), written atomically and read with ``weights_only=True``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["read_rule_file", "write_rule_file"]


def write_rule_file(
    path: str | os.PathLike,
    rule: nn.Module,
    provenance: Mapping[str, Any],
    *,
    format: str,
    config: Mapping[str, Any],
) -> Path:
    """Write ``rule``'s ``config``, parameters and ``provenance`` to ``path`` (atomically: a
    reader never sees half a file).

    Examples:
        >>> import tempfile
        >>> path = write_rule_file(Path(tempfile.mkdtemp()) / "r.pt", nn.Linear(2, 1),
        ...                        {"command": "demo"}, format="demo/1", config={"n": 2})
        >>> sorted(read_rule_file(path, format="demo/1", what="demo rule"))
        ['config', 'format', 'parameters', 'provenance']
    """
    path = Path(path)
    data = {
        "format": format,
        "config": dict(config),
        "parameters": {k: v.detach().cpu().clone() for k, v in rule.named_parameters()},
        "provenance": dict(provenance),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)
    return path


def read_rule_file(path: str | os.PathLike, *, format: str, what: str) -> dict[str, Any]:
    """The dict of a rule file of ``format``; a ``ValueError`` naming the file and ``what``
    it should be for anything else (unreadable, another format).

    Examples:
        >>> import tempfile
        >>> bad = Path(tempfile.mkdtemp()) / "bad.pt"
        >>> _ = bad.write_text("not torch")
        >>> try:
        ...     read_rule_file(bad, format="demo/1", what="demo rule")
        ... except ValueError as err:
        ...     print(str(err).split(" (")[0])
        cannot read demo rule .../bad.pt
    """
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise ValueError(f"cannot read {what} {path} ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or data.get("format") != format:
        raise ValueError(f"{path} is not a {what} file (format {format!r})")
    return data
