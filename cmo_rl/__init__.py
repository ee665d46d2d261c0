"""cmo_rl: constraint-aware meta-optimization of policy gradient, as TorchRL/TensorDict components."""

from cmo_rl.envs import compat as _compat  # noqa: F401  (Python 3.11 shim, before anything else)

__version__ = "0.1.0"
