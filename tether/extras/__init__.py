"""``from trl.extras import ...`` becomes ``from tether.extras import ...``: ``BestOfNSampler``."""

from .best_of_n import BestOfNSampler

__all__ = ["BestOfNSampler"]
