"""Studies built from tether's pieces: the reward-model over-optimisation study (``tether study overopt``)."""
