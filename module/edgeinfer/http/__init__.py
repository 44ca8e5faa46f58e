"""The module's HTTP address: the server (metrics, health, the status page, its login), the
pages and their static files, and ``/predict``."""
