"""Meta-train a constraint-aware optimizer: the same program as the ``cmo`` console script.

    python recipes/meta_train.py preset=quick
    python recipes/meta_train.py meta_optimizer_type=pid meta_lr=5e-4 device=cpu

Config: ``cmo_rl/conf/default.yaml`` (keys: ``docs/configuration.md``); the program, its run
directory, metrics, checkpoints and meta-test: :mod:`cmo_rl.cli`.
"""

from cmo_rl.cli import main

if __name__ == "__main__":
    main()
