"""Building blocks of the baseline recipes (``recipes/*.py``), one concept per module.

==========================  ========================================================================
module                      what
==========================  ========================================================================
``collection``              ``make_collector`` (one re-seeded batch per epoch), ``finished_episodes``
``onpolicy``                ``compute_advantages``, ``minibatch_epochs`` (KL early stop), learning rates
``rollout_eval``            ``evaluate_policy`` (deterministic episodes), ``sync_observation_norm``
``guard``                   ``NonFiniteGuard``: skip or stop on NaN/inf losses and gradients
``run_state``               checkpoint snapshot/restore, the config of a resumed run
``run``                     ``TrainingRun``: run dir, logger, evaluation, checkpoints, shutdown
``schema``                  config schemas of the recipes and cross-key checks
``setup``                   seeds, threads, train/eval envs, networks and estimators from a config
==========================  ========================================================================

Modules are imported explicitly (``from cmo_rl.training.run import TrainingRun``), so importing
this package stays light.
"""
