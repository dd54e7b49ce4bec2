"""Credentials and TLS for every paho client fleetwatch opens (the source, the alert notifier), from one
``MQTTConfig``."""

from __future__ import annotations

import ssl

import paho.mqtt.client as paho

from fleetwatch.config import MQTTConfig


def apply_credentials_and_tls(client: paho.Client, cfg: MQTTConfig) -> None:
    if cfg.username:
        password = cfg.resolved_password()
        client.username_pw_set(cfg.username, password.get_secret_value() if password else None)
    if cfg.tls.enabled:
        client.tls_set(
            ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
            certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
            keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
            cert_reqs=ssl.CERT_NONE if cfg.tls.insecure_skip_verify else ssl.CERT_REQUIRED,
        )
        if cfg.tls.insecure_skip_verify:
            client.tls_insecure_set(True)
