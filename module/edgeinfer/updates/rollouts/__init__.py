"""A gateway's rollouts: a candidate in shadow, canary or A/B beside the active model."""
