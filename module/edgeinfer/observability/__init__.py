"""Prometheus metrics, health endpoints and JSON logs."""
