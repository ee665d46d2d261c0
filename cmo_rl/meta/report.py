"""The meta-test of a ``cmo`` run and its report: before/after table, CSV, plots, eval metrics.

:func:`run_meta_test` runs the initial and the learned optimizer, frozen, on every training
task and every held-out ``eval_env_ids`` task for the ``meta_test.seeds``
(:func:`cmo_rl.meta.frozen.meta_test`, common random numbers), optionally adds the rows of
baselines trained on the same env-step budget, and writes into the run directory:

* ``meta_test.txt``: a header (inner rounds, seeds, limit, PID gains) and the table of
  :func:`format_meta_test_table` over :func:`summarize_meta_test` (per task and split: means
  over seeds, and the paired learned - initial change with its 95% CI);
* ``meta_test.csv``: one row per (task, seed, optimizer);
* ``plots/meta_test_return.png``, ``plots/meta_test_cost.png``: per task, the mean over seeds
  after each inner round, initial vs learned.

Examples:
    >>> rows = [dict(optimizer=o, env_id="T", split="train", seed=s, objective=v, cost=1.0)
    ...         for o, s, v in [("initial", 0, 1.0), ("learned", 0, 3.0)]]
    >>> print(format_meta_test_table(summarize_meta_test(rows)))  # doctest: +NORMALIZE_WHITESPACE
    task  split  optimizer  objective  return  cost  eval return  eval cost
    T     train  initial    1          -       1     -            -
    T     train  learned    3          -       1     -            -
    T     train  change     +2         -       +0    -            -
"""

from __future__ import annotations

import csv
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cmo_rl.evaluation import mean_ci95
from cmo_rl.meta.frozen import meta_test
from cmo_rl.meta.functional import MetaOptimizer
from cmo_rl.meta.tasks import RolloutTaskSampler
from cmo_rl.meta.trainer import MetaTrainer

__all__ = [
    "format_meta_test_table",
    "run_meta_test",
    "summarize_meta_test",
    "write_meta_test_rows",
]

#: ``baselines(env_ids, seeds=, inner_rollouts=, held_out=) -> rows``: more optimizers of the
#: meta-test, trained on the same tasks and seeds with the same env-step budget
#: (``inner_rollouts`` epochs of one round's steps; rows with ``optimizer``, ``env_id``, ``split``,
#: ``seed``, ``eval_return``, ``eval_cost``, ``env_steps``).
BaselineRuns = Callable[..., list[dict[str, Any]]]
_METRICS = ("objective", "return", "cost", "eval_return", "eval_cost")


def run_meta_test(
    cfg: Mapping[str, Any],
    trainer: MetaTrainer,
    initial: MetaOptimizer,
    run_dir: Path,
    *,
    echo: Callable[[str], None] = print,
    baselines: BaselineRuns | None = None,
) -> dict[str, float]:
    """The meta-test of the ``cmo`` config ``cfg`` (keys ``env_ids``, ``eval_env_ids``,
    ``meta_test.rounds`` (the meta-test's ``inner_rollouts``; ``0``: the training value),
    ``meta_test.seeds``, ``cost_limit``, ``mu``, ``eval_episodes``, ``meta_optimizer_type``)
    after ``trainer``'s meta-training from ``initial``, with ``trainer``'s task settings; writes
    the report into ``run_dir``, prints the table with ``echo``.

    Returns the scalars to log at ``trainer.iteration`` (the learned optimizer's deterministic
    ``eval/episode_return`` / ``eval/episode_cost``, per task and overall, ``eval/num_episodes``,
    ``time/eval``), or ``{}`` without evaluation episodes.

    Examples:
        >>> import copy, tempfile
        >>> from cmo_rl.meta import MetaTrainer, make_meta_optimizer
        >>> sampler = RolloutTaskSampler(["MockCMDP-v0"], episode_length=5, vector_envs_per_task=2,
        ...                              hidden_layers=(4,))
        >>> trainer = MetaTrainer(make_meta_optimizer("pid"), sampler, inner_rollouts=2,
        ...                       unroll_steps=2, meta_batch_size=1, cost_limit=1.0, mu=2.0)
        >>> initial = copy.deepcopy(trainer.meta_optimizer)
        >>> cfg = {"env_ids": ["MockCMDP-v0"], "eval_env_ids": [], "inner_rollouts": 2,
        ...        "meta_test": {"rounds": 1, "seeds": [5]}, "cost_limit": 1.0, "mu": 2.0,
        ...        "eval_episodes": 2, "meta_optimizer_type": "pid"}
        >>> run_dir = Path(tempfile.mkdtemp())
        >>> scalars = run_meta_test(cfg, trainer, initial, run_dir, echo=lambda text: None)
        >>> sorted(p.name for p in run_dir.iterdir()), scalars["eval/num_episodes"]
        (['meta_test.csv', 'meta_test.txt', 'plots'], 2.0)
    """
    start = time.perf_counter()
    mt = cfg["meta_test"]
    inner_rollouts = int(mt["rounds"]) or int(cfg["inner_rollouts"])
    seeds = [int(s) for s in mt["seeds"]]
    held_out = list(cfg["eval_env_ids"])
    env_ids = [*cfg["env_ids"], *held_out]
    cost_limit, mu = float(cfg["cost_limit"]), float(cfg["mu"])
    eval_episodes = int(cfg["eval_episodes"])
    sampler = RolloutTaskSampler(env_ids, trainer.task_sampler.settings)
    echo(
        f"meta-test: initial vs learned {cfg['meta_optimizer_type']} optimizer (frozen) on "
        f"{len(env_ids)} task(s) x {len(seeds)} held-out seeds ..."
    )
    try:
        rows = meta_test(
            {"initial": initial, "learned": trainer.meta_optimizer},
            sampler,
            seeds=seeds,
            inner_rollouts=inner_rollouts,
            cost_limit=cost_limit,
            mu=mu,
            violation_scale=trainer.violation_scale,
            eval_episodes=eval_episodes,
            held_out=held_out,
        )
    finally:
        sampler.close()
    if baselines is not None:
        echo("meta-test: PPO-Lag and PID-Lag on the same budget and seeds ...")
        rows += baselines(env_ids, seeds=seeds, inner_rollouts=inner_rollouts, held_out=held_out)
    settings = sampler.settings
    episode_length, num_envs = settings.episode_length, settings.vector_envs_per_task
    header = [
        f"meta-test after {trainer.iteration} meta-iterations ({time.perf_counter() - start:.0f} s):"
        f" every optimizer (frozen) trains a fresh policy for {inner_rollouts} inner rounds of "
        f"{num_envs} envs x {episode_length} steps on each task, for each of {len(seeds)} "
        f"held-out seeds {seeds} (common random numbers: same env seeds, initial policy and "
        "action noise).",
        f"return, cost: one fresh batch of the final policy ({num_envs} episodes of "
        f"{episode_length} steps); objective = return - mu * max(0, cost - d), mu = {mu:g}; "
        f"eval: {eval_episodes} deterministic episodes.",
        f"cost limit d = {cost_limit:g} per {episode_length}-step episode (= "
        f"{cost_limit * 1000.0 / episode_length:g} per 1000 steps). 'change' = learned - "
        "initial, paired by task and seed, ± 95% CI half-width.",
    ]
    if hasattr(initial, "gains"):
        before, after = initial.gains(), trainer.meta_optimizer.gains()
        header.append(
            "PID gains, initial -> learned: "
            + ", ".join(
                f"{k} {float(before[k].detach()):.3g} -> {float(after[k].detach()):.3g}"
                for k in before
            )
        )
    if baselines is not None:
        header.append(
            f"ppo_lag / pid_lag: the baseline recipes with the same {inner_rollouts} x "
            f"{num_envs * episode_length} env steps of training and the same seeds (eval columns "
            "only)."
        )
    text = "\n".join(header) + "\n\n" + format_meta_test_table(summarize_meta_test(rows)) + "\n"
    (run_dir / "meta_test.txt").write_text(text)
    write_meta_test_rows(run_dir / "meta_test.csv", rows)
    echo("\n" + text)
    scalars = _eval_scalars(rows, env_ids, eval_episodes)
    if scalars:
        scalars["time/eval"] = time.perf_counter() - start
    _plot_meta_test(rows, run_dir / "plots" / "meta_test.png", cost_limit)
    return scalars


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan


def _eval_scalars(
    rows: Sequence[Mapping[str, Any]], env_ids: Sequence[str], eval_episodes: int
) -> dict[str, float]:
    learned = [r for r in rows if r["optimizer"] == "learned" and "eval_return" in r]
    if not learned:
        return {}
    scalars: dict[str, float] = {}
    for env_id in env_ids:
        mine = [r for r in learned if r["env_id"] == env_id]
        scalars[f"eval/episode_return/{env_id}"] = _mean(r["eval_return"] for r in mine)
        scalars[f"eval/episode_cost/{env_id}"] = _mean(r["eval_cost"] for r in mine)
    scalars["eval/episode_return"] = _mean(r["eval_return"] for r in learned)
    scalars["eval/episode_cost"] = _mean(r["eval_cost"] for r in learned)
    scalars["eval/num_episodes"] = float(len(learned) * eval_episodes)
    return scalars


def write_meta_test_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """``meta_test.csv``: every key of the rows as a column, in order of appearance, except the
    per-round ``rounds`` (plotted instead).

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "meta_test.csv"
        >>> write_meta_test_rows(path, [{"optimizer": "initial", "rounds": [], "return": 1.5},
        ...                             {"optimizer": "ppo_lag", "eval_return": 2.0}])
        >>> print(path.read_text().strip())
        optimizer,return,eval_return
        initial,1.5,
        ppo_lag,,2.0
    """
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k != "rounds" and k not in columns]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _plot_meta_test(rows: Sequence[Mapping[str, Any]], out_png: Path, cost_limit: float) -> None:
    import pandas as pd

    from cmo_rl.plotting import plot_learning_curves

    frames = {}
    for label in ("initial", "learned"):
        mine = [r for r in rows if r["optimizer"] == label and "rounds" in r]
        if not mine:
            return
        columns: dict[str, list[float]] = {}
        for env_id in dict.fromkeys(r["env_id"] for r in mine):
            runs = [r["rounds"] for r in mine if r["env_id"] == env_id]
            for metric in ("return", "cost"):
                columns[f"meta/{metric}/{env_id}"] = [
                    _mean(run[k][metric] for run in runs) for k in range(len(runs[0]))
                ]
        n = len(next(iter(columns.values())))
        frames[label] = pd.DataFrame({"round": list(range(n)), **columns})
    names = [c for c in frames["learned"].columns if c != "round"]
    for metric in ("return", "cost"):
        try:
            plot_learning_curves(
                frames,
                out_png.with_name(f"{out_png.stem}_{metric}.png"),
                x="round",
                metrics=[(n, metric) for n in names if n.split("/")[1] == metric],
                cost_limit=cost_limit,
                title=f"meta-test: mean {metric} over seeds after k frozen-optimizer updates",
                x_label="inner round",
            )
        except Exception as err:  # a plot must never hide the run's own outcome
            warnings.warn(f"could not plot the meta-test: {err}", RuntimeWarning, stacklevel=2)


def _paired(rows: Sequence[Mapping[str, Any]], a: str, b: str, metric: str) -> tuple[float, float]:
    """Mean and 95% CI half-width of ``metric[b] - metric[a]`` paired by (task, seed)."""
    by_key: dict[tuple[str, int], dict[str, float]] = {}
    for r in rows:
        if metric in r:
            by_key.setdefault((r["env_id"], r["seed"]), {})[r["optimizer"]] = r[metric]
    diffs = [v[b] - v[a] for v in by_key.values() if a in v and b in v]
    if not diffs:
        return math.nan, math.nan
    return mean_ci95(diffs)


def summarize_meta_test(
    rows: Sequence[Mapping[str, Any]], *, before: str = "initial", after: str = "learned"
) -> list[dict[str, Any]]:
    """Per group (each task, then ``all train`` / ``all held-out``) and optimizer: the mean of
    every metric over seeds; plus a ``change`` entry: paired ``after - before`` mean and CI.

    Examples:
        >>> rows = [dict(optimizer=o, env_id="T", split="train", seed=s, objective=v)
        ...         for o, s, v in [("initial", 0, 1.0), ("learned", 0, 3.0),
        ...                         ("initial", 1, 2.0), ("learned", 1, 3.0)]]
        >>> [(g["group"], g["optimizer"], g["objective"]) for g in summarize_meta_test(rows)][:3]
        [('T', 'initial', 1.5), ('T', 'learned', 3.0), ('T', 'change', 1.5)]
    """
    groups: list[tuple[str, list[Mapping[str, Any]]]] = []
    for env_id in dict.fromkeys(r["env_id"] for r in rows):
        groups.append((env_id, [r for r in rows if r["env_id"] == env_id]))
    for split in ("train", "held-out"):
        members = [r for r in rows if r["split"] == split]
        if len({r["env_id"] for r in members}) > 1:
            groups.append((f"all {split}", members))
    out = []
    for name, members in groups:
        split = members[0]["split"]
        for label in dict.fromkeys(r["optimizer"] for r in members):
            mine = [r for r in members if r["optimizer"] == label]
            entry: dict[str, Any] = {"group": name, "split": split, "optimizer": label}
            entry["seeds"] = len({r["seed"] for r in mine})
            for m in _METRICS:
                entry[m] = _mean(r[m] for r in mine if m in r)
            out.append(entry)
        labels = {r["optimizer"] for r in members}
        if before in labels and after in labels:
            entry = {"group": name, "split": split, "optimizer": "change"}
            for m in _METRICS:
                mean, half = _paired(members, before, after, m)
                entry[m], entry[f"{m}_ci95"] = mean, half
            out.append(entry)
    return out


def _cell(value: float, half: float | None = None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    text = f"{value:+.4g}" if half is not None else f"{value:.4g}"
    if half is not None and math.isfinite(half):
        text += f" ± {half:.2g}"
    return text


def format_meta_test_table(summary: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width text table of :func:`summarize_meta_test` (``change`` rows: paired
    difference ± 95% CI half-width over seeds).

    Examples:
        >>> print(format_meta_test_table([{"group": "T", "split": "train", "optimizer": "initial",
        ...     "objective": 1.5, "return": 2.0, "cost": 0.5}]))  # doctest: +NORMALIZE_WHITESPACE
        task  split  optimizer  objective  return  cost  eval return  eval cost
        T     train  initial    1.5        2       0.5   -            -
    """
    header = ["task", "split", "optimizer", "objective", "return", "cost"]
    lines = [[*header, "eval return", "eval cost"]]
    for e in summary:
        change = e["optimizer"] == "change"
        cells = [
            _cell(e.get(m, math.nan), e.get(f"{m}_ci95", math.nan) if change else None)
            for m in _METRICS
        ]
        lines.append([str(e["group"]), str(e["split"]), str(e["optimizer"]), *cells])
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in lines
    )
