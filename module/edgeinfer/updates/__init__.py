"""Over-the-air model updates: desired state in, verified and self-tested models swapped in."""
