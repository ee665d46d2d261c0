"""Every ``>>>`` example in the package runs and prints what its docstring says (one test per
module), and every public class and function has one."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

import pytest

import cmo_rl

#: Public names without a ``>>>`` example, and why none is useful. Keep this list short.
WITHOUT_EXAMPLE = {
    # a typing.Protocol: ContextualBanditCMDP and RolloutCMDP are its runnable examples
    "cmo_rl.meta.bilevel.InnerProblem",
    # its life needs a whole recipe config, run dir and envs: recipes/*.py are its examples,
    # tests/recipes and tests/training run it
    "cmo_rl.training.run.TrainingRun",
    # whole programs (they write run directories and train for minutes): tests/test_cli.py and
    # the meta-test of cmo run them
    "cmo_rl.cli.main",
    "cmo_rl.cli.train",
    "cmo_rl.meta_baselines.baseline_runs",
}


def _module_names() -> list[str]:
    names = ["cmo_rl"]
    for info in pkgutil.walk_packages(cmo_rl.__path__, "cmo_rl."):
        if info.name.rsplit(".", 1)[-1] != "__main__":
            names.append(info.name)
    return sorted(names)


MODULES = _module_names()
_FINDER = doctest.DocTestFinder(exclude_empty=True)


def _doctests(module_name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(module_name)
    return [t for t in _FINDER.find(module, module_name) if t.examples]


@pytest.mark.parametrize("module_name", MODULES)
def test_module_doctests(module_name: str) -> None:
    tests = _doctests(module_name)
    if not tests:
        pytest.skip(f"{module_name} has no examples")
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS, verbose=False)
    for test in sorted(tests, key=lambda t: t.name):
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(report)
    assert result.attempted > 0


def test_the_package_has_examples_at_all() -> None:
    """Guards the collection above: a broken finder would make every module 'pass'."""
    counted = sum(len(t.examples) for m in MODULES for t in _doctests(m))
    assert counted > 150, counted


def _public_objects() -> list[tuple[str, object]]:
    out = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name, None)
            if (inspect.isclass(obj) or inspect.isroutine(obj)) and (
                getattr(obj, "__module__", None) == module_name
            ):
                out.append((f"{module_name}.{name}", obj))
    return out


def test_every_public_class_and_function_has_an_example() -> None:
    public = _public_objects()
    assert len(public) > 100
    missing = sorted(
        qualname
        for qualname, obj in public
        if ">>>" not in (inspect.getdoc(obj) or "") and qualname not in WITHOUT_EXAMPLE
    )
    assert not missing, f"add a runnable >>> example to: {missing}"
    stale = WITHOUT_EXAMPLE - {q for q, _ in public}
    assert not stale, f"WITHOUT_EXAMPLE names that are no longer public: {stale}"
