"""Many learners in one process: a vectorised PPO / PPO-Lag / PID-Lag update over a population.

``P`` independently initialised learners of one architecture train side by side: their
parameters are stacked (:mod:`~cmo_rl.population.learners`), one ``torch.func.vmap`` of
``torch.func.grad`` computes every learner's minibatch gradient of the PPO-Lagrangian loss
(:mod:`~cmo_rl.population.loss`), a stacked Adam with per-network clipping applies them
(:mod:`~cmo_rl.population.adam`; learned primal rules, one per learner:
:mod:`~cmo_rl.population.learned_adam`), and :class:`PopulationPPO` runs the passes with a KL early
stop per learner (:mod:`~cmo_rl.population.update`). The learners' envs step as one batched
TorchRL env with per-learner normalisers (:mod:`~cmo_rl.population.env`). The multipliers follow their own rules
per learner (:mod:`~cmo_rl.population.multipliers`). Each piece equals ``P`` separate
single-learner runs (``tests/population``). The package belongs to the baseline wing: it uses
:mod:`cmo_rl.training` and never :mod:`cmo_rl.meta`.
"""

from cmo_rl.population.adam import StackedAdam, adam_update, clip_group_norms
from cmo_rl.population.collection import PopulationCollector
from cmo_rl.population.compiling import CompiledOrEager
from cmo_rl.population.env import (
    PopulationEnv,
    PopulationObservationNorm,
    batching_refusal,
    population_env,
)
from cmo_rl.population.learned_adam import StackedLearnedAdam, learned_adam_update, stack_rules
from cmo_rl.population.learners import (
    GROUPS,
    LearnerNets,
    make_population,
    stack_learners,
    unstack_learners,
)
from cmo_rl.population.loss import LossCoefficients, approx_kl_of, lagrangian_ppo_loss
from cmo_rl.population.multipliers import StackedLagrange, StackedPID
from cmo_rl.population.rng import LearnerRNG
from cmo_rl.population.train import (
    POPULATION_FILE,
    population_seeds,
    train_population,
    train_seeds,
)
from cmo_rl.population.update import BATCH_KEYS, PopulationPPO

__all__ = [
    "BATCH_KEYS",
    "GROUPS",
    "POPULATION_FILE",
    "CompiledOrEager",
    "LearnerNets",
    "LearnerRNG",
    "LossCoefficients",
    "PopulationCollector",
    "PopulationEnv",
    "PopulationObservationNorm",
    "PopulationPPO",
    "StackedAdam",
    "StackedLagrange",
    "StackedLearnedAdam",
    "StackedPID",
    "adam_update",
    "approx_kl_of",
    "batching_refusal",
    "clip_group_norms",
    "lagrangian_ppo_loss",
    "learned_adam_update",
    "make_population",
    "population_env",
    "population_seeds",
    "stack_learners",
    "stack_rules",
    "train_population",
    "train_seeds",
    "unstack_learners",
]
