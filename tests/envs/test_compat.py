"""The Python 3.11 import shim: ndarray dataclass defaults, idempotent install, narrow scope."""

from __future__ import annotations

import dataclasses
import importlib
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cmo_rl.envs import compat

# isort: split
import safety_gymnasium

needs_shim = pytest.mark.skipif(not compat.NEEDS_SHIM, reason="only Python >= 3.11 needs the shim")

_PROBE = textwrap.dedent(
    """
    import dataclasses
    import numpy as np

    @dataclasses.dataclass
    class Geom:
        name: str = "hazard"
        color: np.ndarray = np.array([0.0, 0.0, 1.0])
    """
)


@needs_shim
def test_ndarray_default_fails_without_the_context() -> None:
    # what breaks on 3.11: the reason the shim exists
    with pytest.raises(ValueError, match="mutable default"):

        @dataclasses.dataclass
        class Geom:
            color: np.ndarray = np.array([1.0, 0.0, 0.0])


def test_ndarray_default_becomes_a_per_instance_copy() -> None:
    with compat.ndarray_defaults_as_factories():

        @dataclasses.dataclass
        class Geom:
            size: float = 0.2
            color: np.ndarray = np.array([1.0, 0.0, 0.0])

    a, b = Geom(), Geom()
    a.color[0] = 9.0
    assert b.color.tolist() == [1.0, 0.0, 0.0]  # each instance has its own array
    assert Geom.color.tolist() == [1.0, 0.0, 0.0]  # the class attribute keeps the original
    assert a.color is not Geom.color and b.color is not Geom.color
    assert Geom(color=np.zeros(3)).color.tolist() == [0.0, 0.0, 0.0]
    assert a.size == 0.2
    # the context restores dataclasses on exit (nested use included)
    with compat.ndarray_defaults_as_factories(), compat.ndarray_defaults_as_factories():
        pass
    assert not hasattr(dataclasses, "_cmo_original_process_class")


@needs_shim
def test_install_and_uninstall_are_idempotent() -> None:
    try:
        assert compat.install() is True
        assert compat.install() is True
        assert sys.meta_path.count(compat._finder) == 1
        compat.uninstall()
        compat.uninstall()
        assert compat._finder not in sys.meta_path
    finally:
        compat.install()
    assert sys.meta_path.count(compat._finder) == 1


@needs_shim
def test_finder_only_claims_safety_gymnasium_modules() -> None:
    finder = compat._finder
    assert finder.find_spec("numpy", None) is None
    assert finder.find_spec("safety_gymnasiumx", None) is None
    assert finder.find_spec("cmo_rl.envs.safety", None) is None
    spec = finder.find_spec("safety_gymnasium.builder", safety_gymnasium.__path__)
    assert spec is not None and isinstance(spec.loader, compat._ShimLoader)


@needs_shim
def test_shim_applies_to_new_safety_gymnasium_submodules_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the same source imports as a safety_gymnasium submodule, and fails as any other module
    (tmp_path / "cmo_probe_geom.py").write_text(_PROBE)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "cmo_probe_outside.py").write_text(_PROBE)
    monkeypatch.setattr(safety_gymnasium, "__path__", [*safety_gymnasium.__path__, str(tmp_path)])
    monkeypatch.syspath_prepend(str(outside))
    names = ("safety_gymnasium.cmo_probe_geom", "cmo_probe_outside")
    try:
        module = importlib.import_module("safety_gymnasium.cmo_probe_geom")
        a, b = module.Geom(), module.Geom()
        a.color[2] = 5.0
        assert b.color.tolist() == [0.0, 0.0, 1.0]
        with pytest.raises(ValueError, match="mutable default"):
            importlib.import_module("cmo_probe_outside")
    finally:
        for name in names:
            sys.modules.pop(name, None)
