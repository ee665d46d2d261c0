"""Atomic, validated checkpoints with RNG states.

File format (version :data:`FORMAT_VERSION`)::

    b"CMORL-CHECKPOINT\\n"                                    magic line
    {"format_version": 1, "payload_bytes": N, "sha256": "...", "torch_version": "..."}\\n
    <N bytes: torch.save(state)>

:func:`save_checkpoint` writes to a temp file in the same directory, ``fsync``\\ s it and
``os.replace``\\ s it over the target (then ``fsync``\\ s the directory), so a reader sees either the
old file or the complete new one, never a partial file, even if the process is killed mid-save.
:func:`load_checkpoint` checks the magic line, the version, the length and the SHA-256 before
unpickling (``weights_only=True`` by default: keep the state to tensors, numbers, strings and
containers, e.g. ``OmegaConf.to_container(cfg)``, not live objects), and raises
:class:`CheckpointError` naming the file otherwise. Loading never writes anything.

Checkpoints of a run live in ``run_dir/checkpoints/step_<step>.pt`` (:func:`checkpoint_path`);
:func:`latest_checkpoint` finds the newest valid one for resuming.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import random
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "capture_rng_state",
    "checkpoint_path",
    "cpu_state_copy",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "restore_rng_state",
    "save_checkpoint",
    "verify_checkpoint",
]

#: Version of the on-disk format written by :func:`save_checkpoint`.
FORMAT_VERSION = 1
_MAGIC = b"CMORL-CHECKPOINT\n"
_MAX_HEADER = 4096
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(Exception):
    """A checkpoint file is missing, truncated, corrupt or of another format version.

    Attributes:
        path: the offending file.

    Examples:
        >>> try:
        ...     load_checkpoint("no/such/dir/step_000000000001.pt")
        ... except CheckpointError as error:
        ...     print(error.path.name)
        step_000000000001.pt
    """

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = Path(path)
        super().__init__(f"checkpoint {self.path}: {problem}")


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    """``run_dir/checkpoints/step_<step, 12 digits>.pt``.

    Examples:
        >>> checkpoint_path("runs/ppo_lag/X/20250101-000000", 4096).name
        'step_000000004096.pt'
    """
    step = int(step)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return Path(run_dir) / "checkpoints" / f"step_{step:012d}.pt"


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Atomically write ``state`` to ``path`` (temp file + fsync + ``os.replace``).

    Args:
        path: target file; parent directories are created.
        state: a mapping, e.g. ``{"step": s, "policy": module.state_dict(), "rng":
            capture_rng_state(), "config": OmegaConf.to_container(cfg)}``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Examples:
        >>> import tempfile, torch
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = save_checkpoint(f"{d}/ckpt.pt", {"step": 3, "w": torch.ones(2)})
        ...     load_checkpoint(p)["w"]
        tensor([1., 1.])
    """
    if not isinstance(state, Mapping):
        raise ValueError(f"checkpoint state must be a mapping, got {type(state).__name__}")
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    payload = buffer.getvalue()
    header = {
        "format_version": FORMAT_VERSION,
        "payload_bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "torch_version": torch.__version__,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(_MAGIC)
            f.write(json.dumps(header).encode() + b"\n")
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_verified(path: Path) -> bytes:
    """Return the payload of a valid checkpoint file, or raise :class:`CheckpointError`."""
    if not path.exists():
        raise CheckpointError(path, "no such file")
    if not path.is_file():
        raise CheckpointError(path, "not a regular file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(path, f"cannot be read ({err})") from err
    if not data.startswith(_MAGIC):
        if _MAGIC.startswith(data):
            raise CheckpointError(path, f"truncated: only {len(data)} bytes")
        raise CheckpointError(path, "not a cmo_rl checkpoint (bad magic bytes)")
    end = data.find(b"\n", len(_MAGIC), len(_MAGIC) + _MAX_HEADER)
    if end < 0:
        if len(data) < len(_MAGIC) + _MAX_HEADER:
            raise CheckpointError(path, "truncated inside the header")
        raise CheckpointError(path, "corrupt header (no end of line)")
    try:
        header = json.loads(data[len(_MAGIC) : end])
        version = header["format_version"]
        expected = int(header["payload_bytes"])
        digest = str(header["sha256"])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(path, f"corrupt header ({err})") from err
    if version != FORMAT_VERSION:
        raise CheckpointError(
            path,
            f"format version {version!r}, but this cmo_rl reads version {FORMAT_VERSION}",
        )
    payload = data[end + 1 :]
    if len(payload) < expected:
        raise CheckpointError(
            path, f"truncated: {len(payload)} of {expected} payload bytes present"
        )
    if len(payload) > expected:
        raise CheckpointError(path, f"corrupt: {len(payload) - expected} trailing bytes")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError(path, "corrupt: SHA-256 checksum mismatch")
    return payload


def verify_checkpoint(path: str | os.PathLike) -> None:
    """Check magic, version, length and checksum without unpickling; raise :class:`CheckpointError`.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = save_checkpoint(f"{d}/c.pt", {"step": 1})
        ...     _ = p.write_bytes(p.read_bytes()[:-3])  # cut the file short
        ...     verify_checkpoint(p)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        cmo_rl.lifecycle.checkpoint.CheckpointError: checkpoint ...c.pt: truncated: ... payload bytes present
    """
    _read_verified(Path(path))


def load_checkpoint(
    path: str | os.PathLike,
    map_location: str | torch.device | None = "cpu",
    *,
    weights_only: bool = True,
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the checkpoint file.
        map_location: passed to :func:`torch.load` (``"cpu"``, ``"cuda:0"``, a device).
        weights_only: passed to :func:`torch.load`; ``True`` refuses arbitrary pickled objects.

    Raises:
        CheckpointError: missing, truncated, corrupt (checksum), wrong format version, or not
            unpicklable; the message names the file. Nothing on disk is modified.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = save_checkpoint(checkpoint_path(d, 8), {"step": 8, "w": torch.ones(2)})
        ...     state = load_checkpoint(path)
        >>> state["step"], state["w"]
        (8, tensor([1., 1.]))
    """
    path = Path(path)
    payload = _read_verified(path)
    try:
        state = torch.load(
            io.BytesIO(payload), map_location=map_location, weights_only=weights_only
        )
    except Exception as err:
        raise CheckpointError(path, f"cannot be unpickled ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict):
        raise CheckpointError(path, f"holds a {type(state).__name__}, not a state dict")
    return state


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The ``checkpoints/step_<step>.pt`` files of ``run_dir``, oldest step first (unverified).

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = save_checkpoint(checkpoint_path(d, 100), {"step": 100})
        ...     _ = save_checkpoint(checkpoint_path(d, 20), {"step": 20})
        ...     [p.name for p in list_checkpoints(d)]
        ['step_000000000020.pt', 'step_000000000100.pt']
    """
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found) if p.is_file()]


def latest_checkpoint(run_dir: str | os.PathLike, *, verify: bool = True) -> Path | None:
    """The ``checkpoints/step_<step>.pt`` of ``run_dir`` with the largest step, or ``None``.

    With ``verify=True`` (default) files failing :func:`verify_checkpoint` are skipped with a
    warning, so a resume falls back to the previous good checkpoint.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = save_checkpoint(checkpoint_path(d, 100), {"step": 100})
        ...     _ = save_checkpoint(checkpoint_path(d, 20), {"step": 20})
        ...     latest_checkpoint(d).name
        'step_000000000100.pt'
    """
    for p in reversed(list_checkpoints(run_dir)):
        if not verify:
            return p
        try:
            verify_checkpoint(p)
        except CheckpointError as err:
            warnings.warn(f"skipping invalid checkpoint: {err}", RuntimeWarning, stacklevel=2)
            continue
        return p
    return None


def prune_checkpoints(run_dir: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest ``step_<step>.pt`` files; return the deleted paths.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     for s in (1, 2, 3):
        ...         _ = save_checkpoint(checkpoint_path(d, s), {"step": s})
        ...     [p.name for p in prune_checkpoints(d, keep_last=2)]
        ['step_000000000001.pt']
    """
    if int(keep_last) < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    found = list_checkpoints(run_dir)
    doomed = found[: max(0, len(found) - int(keep_last))]
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed


def cpu_state_copy(tree: Any) -> Any:
    """Deep copy of a state tree (dicts, lists, tuples) with every tensor detached and on CPU.

    What a checkpoint stores: independent of the live modules (later in-place updates do not
    leak in) and loadable on a machine without the training device. Dicts are shallow-copied
    first, so ``OrderedDict`` and the ``_metadata`` of module state dicts survive.

    Examples:
        >>> import torch
        >>> live = torch.nn.Linear(2, 1)
        >>> state = cpu_state_copy(live.state_dict())
        >>> with torch.no_grad():
        ...     _ = live.weight.add_(1.0)
        >>> type(state).__name__, bool((state["weight"] + 1 == live.weight).all())
        ('OrderedDict', True)
    """
    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, dict):
        out = copy.copy(tree)
        for key, value in tree.items():
            out[key] = cpu_state_copy(value)
        return out
    if isinstance(tree, (list, tuple)):
        return type(tree)(cpu_state_copy(v) for v in tree)
    return copy.deepcopy(tree)


# -- RNG state ------------------------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    """Snapshot of the global RNGs: Python ``random``, NumPy (legacy global), torch CPU and CUDA.

    Everything is stored as tensors, ints, floats, strings and tuples, so it survives
    ``load_checkpoint(..., weights_only=True)``. CUDA states (one per device) are included only
    where CUDA is available.

    Examples:
        >>> import random, torch
        >>> state = capture_rng_state()
        >>> a = (random.random(), torch.rand(1).item())
        >>> restore_rng_state(state)
        >>> (random.random(), torch.rand(1).item()) == a
        True
    """
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the global RNG)
    state: dict[str, Any] = {
        "python": (version, tuple(internal), gauss),
        "numpy": {
            "bit_generator": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the RNGs captured by :func:`capture_rng_state` (tensors may be on any device).

    CUDA states are restored for as many devices as both the snapshot and this machine have (a
    warning says so when the counts differ); a snapshot without CUDA states leaves CUDA alone.

    Examples:
        >>> import numpy as np
        >>> state = capture_rng_state()
        >>> a = np.random.rand()  # the global NumPy RNG
        >>> restore_rng_state(state)
        >>> bool(np.random.rand() == a)
        True
    """
    missing = [k for k in ("python", "numpy", "torch") if k not in state]
    if missing:
        raise ValueError(f"RNG state lacks {missing}; expected the dict of capture_rng_state()")
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    np_state = state["numpy"]
    keys = torch.as_tensor(np_state["keys"]).cpu().numpy().astype(np.uint32)
    np.random.set_state(  # noqa: NPY002 (the global RNG)
        (
            np_state["bit_generator"],
            keys,
            int(np_state["pos"]),
            int(np_state["has_gauss"]),
            float(np_state["cached_gaussian"]),
        )
    )
    torch.set_rng_state(torch.as_tensor(state["torch"]).cpu().to(torch.uint8))
    cuda_states = state.get("torch_cuda")
    if cuda_states is not None and torch.cuda.is_available():
        n = min(len(cuda_states), torch.cuda.device_count())
        if n != len(cuda_states) or n != torch.cuda.device_count():
            warnings.warn(
                f"RNG state has {len(cuda_states)} CUDA device(s), this machine "
                f"{torch.cuda.device_count()}; restoring the first {n}",
                RuntimeWarning,
                stacklevel=2,
            )
        for i in range(n):
            torch.cuda.set_rng_state(torch.as_tensor(cuda_states[i]).cpu().to(torch.uint8), i)
