"""Delivery between two versions: which one answers a reading, and how they compare."""
