"""Config validation: every kind of problem, all at once, and clean CLI exits (subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cmo_rl.config import ConfigError, Field, Rule, device_check, env_id_check, validate_config
from cmo_rl.lifecycle import run_cli

REPO = Path(__file__).resolve().parents[1]


def loud_positive(value):
    if value <= 0:
        raise ValueError("must be positive, the loud way")


def is_even(value):
    return value % 2 == 0


SCHEMA = {
    "env_id": Field(str, check=env_id_check("MockCMDP-v0")),
    "seed": Field(int, ge=0),
    "cost_limit": Field(float, ge=0),
    "meta_optimizer_type": Field(str, choices=("lstm", "pid")),
    "meta_batch_size": Field(int, ge=1),
    "gamma": Field(float, gt=0, le=1),
    "checkpoint_every": Field(int, ge=1, nullable=True),
    "tags": Field(list, items=str, required=False),
    "optim": {"lr": Field(float, gt=0), "betas": Field(list, items=float)},
    "extra": Field(dict, required=False),
    "num_envs": Field(int, check=is_even),
    "horizon": Field(int, check=loud_positive),
}

GOOD = {
    "env_id": "MockCMDP-v0",
    "seed": 0,
    "cost_limit": 25,  # an int is a float
    "meta_optimizer_type": "pid",
    "meta_batch_size": 8,
    "gamma": 1.0,
    "checkpoint_every": None,
    "optim": {"lr": 3e-4, "betas": [0.9, 0.999]},
    "extra": {"anything": {"goes": 1}},
    "num_envs": 4,
    "horizon": 1000,
}


def problems_of(cfg, schema=SCHEMA) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate_config(cfg, schema)
    return info.value.problems


def test_valid_configs_pass_as_dict_and_dictconfig():
    validate_config(GOOD, SCHEMA)
    cfg = OmegaConf.create({**GOOD, "optim": {"lr": "${gamma}", "betas": [0.9, 0.999]}})
    OmegaConf.set_struct(cfg, True)
    validate_config(cfg, SCHEMA)  # interpolations are resolved first


def test_every_problem_is_reported_in_one_message():
    bad = {
        **GOOD,
        "seed": True,  # a bool is not an int
        "cost_limit": -5.0,
        "meta_optimizer_type": "lsmt",
        "meta_batch_size": 0,
        "gamma": 1.5,
        "optim": {"lr": "fast", "betas": [0.9, "x"], "momentum": 0.9},
        "meta_bach_size": 8,
        "num_envs": 3,
        "horizon": -1,
    }
    del bad["checkpoint_every"]
    with pytest.raises(ConfigError) as info:
        validate_config(bad, SCHEMA)
    assert info.value.problems == [
        "meta_bach_size: unknown key (did you mean meta_batch_size?); known keys: "
        + str(sorted(SCHEMA)),
        "seed: got True (bool), allowed: int >= 0",
        "cost_limit: got -5.0, out of range; allowed: float >= 0",
        "meta_optimizer_type: got 'lsmt', allowed: one of ['lstm', 'pid'] (did you mean 'lstm'?)",
        "meta_batch_size: got 0, out of range; allowed: int >= 1",
        "gamma: got 1.5, out of range; allowed: float > 0 and <= 1",
        "checkpoint_every: missing (or ???), allowed: int >= 1 or null",
        "optim.momentum: unknown key; known keys: ['betas', 'lr']",
        "optim.lr: got 'fast' (str), allowed: float > 0",
        "optim.betas: item 1 is 'x' (str), allowed: list of float",
        "num_envs: got 3, allowed: int, passing is_even",
        "horizon: got -1: must be positive, the loud way",
    ]
    message = str(info.value)
    assert message.startswith("invalid config (12 problems):\n  - meta_bach_size")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("meta_batch_size", 8.0, "meta_batch_size: got 8.0 (float), allowed: int >= 1"),
        ("optim.lr", -1e-3, "optim.lr: got -0.001, out of range; allowed: float > 0"),
        ("optim.lr", float("nan"), "optim.lr: got nan, out of range; allowed: float > 0"),
        ("optim.lr", 0, "optim.lr: got 0, out of range; allowed: float > 0"),
        ("cost_limit", None, "cost_limit: got null, allowed: float >= 0"),
        ("tags", "a,b", "tags: got 'a,b' (str), allowed: list of str"),
        ("optim", 3, "optim: got 3 (int), allowed: a sub-config with keys ['betas', 'lr']"),
    ],
)
def test_single_problems(key, value, expected):
    cfg = OmegaConf.to_container(OmegaConf.create(GOOD))
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    assert problems_of(cfg) == [expected]


def test_missing_values_and_broken_interpolations_in_dictconfig():
    cfg = OmegaConf.create({**GOOD, "seed": "???", "gamma": "${nowhere}"})
    problems = problems_of(cfg)
    assert problems[0].startswith("gamma: cannot be resolved (")
    assert "nowhere" in problems[0]
    assert "seed: missing (or ???), allowed: int >= 0" in problems
    assert "gamma: missing (or ???), allowed: float > 0 and <= 1" in problems
    assert len(problems) == 3


def test_missing_sub_config_and_bad_schema():
    cfg = {k: v for k, v in GOOD.items() if k != "optim"}
    assert problems_of(cfg) == ["optim: missing sub-config (keys ['betas', 'lr'])"]
    with pytest.raises(TypeError, match="schema entry 'x' must be a Field or a dict"):
        validate_config({"x": 1}, {"x": int})


def test_env_id_check_uses_the_task_registry():
    check = env_id_check("MockCMDP-v0")
    assert check("MockCMDP-v0") is True
    assert check("SafetyPointGoal1-v0") is True
    problems = problems_of({**GOOD, "env_id": "SafetyPointGaol1-v0"})
    assert len(problems) == 1
    assert problems[0].startswith("env_id: got 'SafetyPointGaol1-v0': unknown Safety-Gymnasium")
    assert "did you mean 'SafetyPointGoal1-v0'" in problems[0]


def test_device_check():
    schema = {"device": Field(str, check=device_check)}
    validate_config({"device": "cpu"}, schema)
    assert problems_of({"device": "gpu"}, schema) == [
        "device: got 'gpu': not a torch device string (use 'cpu', 'cuda' or 'cuda:<index>')"
    ]
    if not torch.cuda.is_available():
        assert problems_of({"device": "cuda:0"}, schema) == [
            "device: got 'cuda:0': CUDA is not available on this machine (use device=cpu)"
        ]
    else:
        n = torch.cuda.device_count()
        assert "CUDA device(s) here" in problems_of({"device": f"cuda:{n}"}, schema)[0]


def test_single_key_and_cross_key_problems_come_in_one_message():
    """A cross-key rule runs with the single-key checks (it used to be reported only after the
    single-key problems were fixed); a rule that reads a key with its own problem is skipped."""
    schema = {"num_envs": Field(int, ge=1), "batch": Field(int, ge=1), "lr": Field(float, gt=0)}

    def multiple(cfg):
        return [] if cfg["batch"] % cfg["num_envs"] == 0 else ["batch: not a multiple of num_envs"]

    rules = [Rule(("num_envs", "batch"), multiple)]
    with pytest.raises(ConfigError) as info:
        validate_config({"num_envs": 3, "batch": 100, "lr": -1.0}, schema, rules)
    assert info.value.problems == [
        "lr: got -1.0, out of range; allowed: float > 0",
        "batch: not a multiple of num_envs",
    ]
    with pytest.raises(ConfigError) as info:  # num_envs=0 is reported once, by its field
        validate_config({"num_envs": 0, "batch": 100, "lr": 1.0}, schema, rules)
    assert [p.split(":")[0] for p in info.value.problems] == ["num_envs"]
    validate_config({"num_envs": 4, "batch": 100, "lr": 1.0}, schema, rules)


def test_field_describe():
    assert Field(int, ge=1).describe() == "int >= 1"
    assert Field((int, str)).describe() == "int or str"
    assert Field(list, items=float, nullable=True).describe() == "list of float or null"
    assert Field(float, gt=0, lt=1).describe() == "float > 0 and < 1"


def test_run_cli_in_process(capsys):
    calls = []

    @run_cli(schema={"lr": Field(float, gt=0)})
    def main(cfg):
        calls.append(cfg)
        return "done"

    assert main({"lr": 1.0}) == "done"
    with pytest.raises(SystemExit) as info:
        main({"lr": -1.0})
    assert info.value.code == 2 and len(calls) == 1  # main never ran on the bad config
    assert capsys.readouterr().err == (
        "invalid config (1 problem):\n  - lr: got -1.0, out of range; allowed: float > 0\n"
    )

    @run_cli
    def interrupted(cfg):
        raise KeyboardInterrupt

    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        interrupted({})
    assert info.value.code == 130
    assert capsys.readouterr().err == "interrupted (SIGINT); exiting\n"  # was "interrupted ()"
    assert main.__wrapped__.__name__ == "main"  # Hydra unwraps to find the recipe file


HYDRA_APP = """
import hydra
from cmo_rl.config import Field
from cmo_rl.lifecycle import run_cli

SCHEMA = {
    "lr": Field(float, gt=0),
    "meta_optimizer_type": Field(str, choices=("lstm", "pid")),
    "optim": {"betas": Field(list, items=float)},
}

@hydra.main(config_path="config", config_name="app", version_base=None)
@run_cli(schema=SCHEMA)
def main(cfg):
    print("ran with lr", cfg.lr)

if __name__ == "__main__":
    main()
"""


def test_hydra_recipe_exit_codes_and_messages(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "app.yaml").write_text(
        "lr: 0.001\nmeta_optimizer_type: pid\noptim:\n  betas: [0.9, 0.99]\n"
    )
    (tmp_path / "app.py").write_text(textwrap.dedent(HYDRA_APP))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("HYDRA_FULL_ERROR", None)

    def run(*overrides: str) -> subprocess.CompletedProcess:
        args = [sys.executable, "app.py", f"hydra.run.dir={tmp_path / 'out'}", *overrides]
        return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)

    ok = run("lr=0.01")
    assert ok.returncode == 0 and "ran with lr 0.01" in ok.stdout, ok.stderr

    bad = run("lr=-1", "meta_optimizer_type=lsmt", "optim.betas=[0.9,x]")
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert bad.stderr == (
        "invalid config (3 problems):\n"
        "  - lr: got -1, out of range; allowed: float > 0\n"
        "  - meta_optimizer_type: got 'lsmt', allowed: one of ['lstm', 'pid'] "
        "(did you mean 'lstm'?)\n"
        "  - optim.betas: item 1 is 'x' (str), allowed: list of float\n"
    )

    typo = run("optim.betaz=[0.9]")  # not in the yaml: Hydra's struct mode refuses it
    assert typo.returncode == 1
    assert "Traceback" not in typo.stderr
    assert "Could not override 'optim.betaz'" in typo.stderr
    assert "Key 'betaz' is not in struct" in typo.stderr

    added = run("+lrr=1")  # forced in with '+': the schema still catches it
    assert added.returncode == 2
    assert "lrr: unknown key (did you mean lr?)" in added.stderr


def test_pixel_observation_task_is_refused_with_its_state_twin():
    from cmo_rl.config import env_id_check

    check = env_id_check(state_vector=True)
    with pytest.raises(ValueError, match="'SafetyCarButton1-v0'"):
        check("SafetyCarButton1Vision-v0")
    assert check("SafetyCarButton1-v0")
    assert env_id_check()("SafetyCarButton1Vision-v0")  # make_safety_env-level check accepts it


def test_cmo_reports_single_key_and_cross_key_problems_together():
    """``cmo``: a held-out task that is also a training task used to be reported only after the
    single-key problems were fixed."""
    from omegaconf import OmegaConf

    from cmo_rl.meta_schema import DEFAULT_CONFIG, check_meta_config

    cfg = OmegaConf.load(DEFAULT_CONFIG)
    cfg.pop("defaults"), cfg.pop("hydra")
    cfg.eval_env_ids = [cfg.env_ids[0]]
    cfg.meta_lr, cfg.mu = -1.0, -2.0
    with pytest.raises(ConfigError) as info:
        check_meta_config(cfg)
    assert [p.split(":")[0] for p in info.value.problems] == ["meta_lr", "mu", "eval_env_ids"]
