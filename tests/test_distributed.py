"""Distributed collection through TorchRL's RayCollector, on a local Ray cluster of 2 CPUs."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from cmo_rl.envs.factory import make_env
from cmo_rl.meta.functional import log_prob_of
from cmo_rl.modules import make_actor
from cmo_rl.training.collection import make_collector
from cmo_rl.training.parallel import WorkerCollector, worker_spec

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'cmo_rl[scale]')")

HORIZON = 5


def _cfg(backend: str) -> dict:
    return {
        "env_id": "MockCMDP-v0",
        "num_envs": 4,
        "episode_length": HORIZON,
        "normalize_observations": False,
        "collector": {
            "backend": backend,
            "num_workers": 2,
            "envs_per_worker": None,
            "ray_address": None,
        },
    }


def _collect(backend: str, actor, env) -> list[TensorDict]:
    collector = make_collector(
        env,
        actor,
        steps_per_epoch=4 * 2 * HORIZON,
        num_epochs=2,
        seed=11,
        workers=worker_spec(_cfg(backend)),
    )
    assert isinstance(collector, WorkerCollector)
    batches = []
    try:
        for batch in collector:
            batches.append(batch.clone())
            if len(batches) == 1:  # epoch 1 must be collected with the new weights
                with torch.no_grad():
                    for p in actor.parameters():
                        p.mul_(1.5)
    finally:
        collector.shutdown()
    return batches


@pytest.fixture(scope="module")
def local_ray():
    if ray.is_initialized():  # pragma: no cover - another test left one running
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow  # a local Ray cluster and 2 actors start in ~25 s here; multi_sync adds ~20 s
def test_ray_workers_collect_what_local_workers_collect(local_ray):
    env = make_env("MockCMDP-v0", num_envs=4, max_episode_steps=HORIZON)
    torch.manual_seed(0)
    actor = make_actor(env, hidden_layers=(8,))
    initial = {k: v.clone() for k, v in actor.state_dict().items()}
    remote = _collect("ray", actor, env)
    from datetime import timedelta

    from torchrl.weight_update import _ray

    assert _ray._DIST_TIMEOUT >= timedelta(seconds=600)  # slow worker starts are waited for
    assert local_ray.is_initialized()  # the collector leaves the test's cluster running

    for batch in remote:
        assert batch.batch_size == torch.Size([4, 2 * HORIZON])
        assert batch["next", "done"].sum().item() == 8  # 2 whole episodes per sub-env
    # epoch 1 was collected by the remote actors with the weights pushed after epoch 0
    expected = log_prob_of(actor, TensorDict.from_module(actor), remote[1]).detach()
    torch.testing.assert_close(remote[1]["action_log_prob"], expected, rtol=0, atol=1e-5)

    # same seeds and worker code: Ray actors and local processes collect the same data
    actor.load_state_dict(initial)
    local = _collect("multi_sync", actor, env)
    for r, m in zip(remote, local):
        for key in ("observation", "action", ("next", "reward"), ("next", "cost")):
            assert torch.equal(r[key], m[key]), key
