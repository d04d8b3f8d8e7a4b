"""``from trl.core import ...`` becomes ``from tether.core import ...``: TRL 0.11's helpers
(``LengthSampler``, ``respond_to_batch``, ``set_seed``, masked statistics). See ``tether.compat``."""

from .compat.core import *  # noqa: F401,F403
from .compat.core import __all__  # noqa: F401
