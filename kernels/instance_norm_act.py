"""Alias of `kernels.instance_norm` (its public names), for imports written as `kernels.instance_norm_act`.

The settings (`CHANNELS_LAST_MODE` in `kernels.instance_norm.plan`, `FAST_EAGER` in `kernels.instance_norm.ops`)
live in those modules only.
"""

from .instance_norm import *  # noqa: F403
from .instance_norm import __all__  # noqa: F401
