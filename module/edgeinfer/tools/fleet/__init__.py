"""Fleets: every module's status, and a rollout across them in waves."""
