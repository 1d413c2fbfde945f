"""The training machinery behind ``stages.train``: augmentation, objective, distributed setup, resume state, RNG."""
