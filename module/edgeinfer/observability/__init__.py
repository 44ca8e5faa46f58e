"""Prometheus metrics, health reports, the status board and JSON logs (served by
:mod:`edgeinfer.http`)."""
