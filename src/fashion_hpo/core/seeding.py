"""The seeding rule: every trial (and its refit) gets its own reproducible seed."""


def trial_seed(seed: int, trial_number: int) -> int:
    """The seed of one trial's weights and batch order: distinct per trial, reproducible per study."""
    return seed * 100_003 + trial_number
