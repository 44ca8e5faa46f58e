"""Admitting a model to serve: load it, self-test it, close it if it fails."""
