"""Credentials and TLS for a paho client, from ``[broker]`` settings (module and tools alike)."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import paho.mqtt.client as paho

from edgeinfer.config import BrokerConfig
from edgeinfer.errors import ConfigError

log = logging.getLogger(__name__)


def apply_security(client: paho.Client, config: BrokerConfig) -> None:
    """Username/password (never logged) and, for ``mqtts://``, TLS with verification on.

    Raises:
        ConfigError: a CA, certificate or key file that cannot be used, naming its key.
    """
    if config.username:
        client.username_pw_set(config.username, config.resolved_password())
    if not config.tls:
        return
    for key, path in (
        ("broker.ca_file", config.ca_file),
        ("broker.cert_file", config.cert_file),
        ("broker.key_file", config.key_file),
    ):
        if path and not Path(path).is_file():
            raise ConfigError(key, path, "a readable PEM file")
    try:
        client.tls_set(
            ca_certs=config.ca_file or None,
            certfile=config.cert_file or None,
            keyfile=config.key_file or None,
            cert_reqs=ssl.CERT_REQUIRED if config.tls_verify else ssl.CERT_NONE,
        )
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        key = "broker.cert_file" if config.cert_file else "broker.ca_file"
        raise ConfigError(
            key, config.cert_file or config.ca_file, f"PEM files that load together ({exc})"
        ) from exc
    if not config.tls_verify:
        log.warning("broker.tls_verify is off: the broker's certificate is not checked")
        client.tls_insecure_set(True)
