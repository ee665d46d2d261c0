"""Learning on the mock CMDP: each recipe drives the cost under a binding limit and keeps return.

Mock CMDP (``cmo_rl.testing.MockCMDPEnv``), 20-step episodes: reward ``a``, cost
``max(0, a) (1 + s) / 2``. Always ``a = 1`` earns 20 at cost 10; the all-zero policy is safe
with return 0; with the limit ``d = 2`` the constraint binds and the best policy acts only
where ``s`` is low (about 8.9 at cost 2). Each run ends with a deterministic evaluation
(16 episodes); we require eval cost ``<= d (1 + 10%)`` and eval return well above 0.
"""

from __future__ import annotations

import pytest
from recipe_helpers import metrics, train

LIMIT = 2.0
COMMON = [
    "env_id=MockCMDP-v0",
    "num_envs=32",
    "episode_length=20",
    "steps_per_epoch=1280",
    "total_steps=38400",  # 30 epochs
    "minibatch_size=256",
    "update_iters=10",
    "lr=1e-3",
    "eval_interval=5",
    "eval_episodes=16",
    "checkpoint_interval=100",
    f"cost_limit={LIMIT}",
    "progress=false",
]
# multiplier rules tuned for 30 short epochs (the yaml defaults are for 500 long ones)
ALGORITHM = {
    "ppo_lagrangian": ["lambda_optimizer=sgd", "lambda_lr=1.0"],
    "pid_lagrangian": [
        "pid_kp=1.0",
        "pid_ki=0.5",
        "pid_kd=0.5",
        "pid_delta_p_ema_alpha=0.5",
        "pid_delta_d_ema_alpha=0.5",
        "pid_d_delay=2",
    ],
    "cpo": [],
}


@pytest.mark.slow  # 10-20 s each
@pytest.mark.parametrize("name", list(ALGORITHM))
def test_recipe_learns_a_safe_policy_with_return(name, tmp_path):
    run = train(name, [*COMMON, *ALGORITHM[name], f"run_root={tmp_path}"])
    df = metrics(run)
    final = df.iloc[-1]
    assert final["eval/episode_cost"] <= LIMIT * 1.1, df.to_string()
    assert final["eval/episode_return"] > 3.0, df.to_string()  # the all-zero policy gets 0
    # the constraint did bind: the policy moved well past the safe region in training, or the
    # multiplier / CPO dual was active
    assert (df["train/lambda"] > 0.5).any()
    # training episodes end near the limit, not far below it (no over-conservative collapse)
    assert df["train/episode_cost"].iloc[-5:].mean() == pytest.approx(LIMIT, rel=0.25)
