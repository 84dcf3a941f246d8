"""Why the broker would not have spkidd, said as the [mqtt] settings to mend.

aiomqtt names only the symptom ("[code:135] Not authorized", "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify
failed: self-signed certificate in certificate chain (_ssl.c:1006)"); a user reading the journal needs to know which
key of config.toml is wrong. aiomqtt raises connect failures as a plain MqttError `from None`, so the TLS error is
found on the exception's context.
"""

from __future__ import annotations

import ssl

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

from spkidd.config import MqttConfig

_AUTH_CODES = frozenset({4, 5, 134, 135})
"""CONNACK codes for a refused user: MQTT 3.1.1's 4 and 5, and their MQTT 5 reason codes 134 and 135."""
_NAME_MISMATCH_CODES = frozenset({62, 64})
"""OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH: trusted, but issued to another name."""


def refusal_sentence(exc: aiomqtt.MqttError, settings: MqttConfig) -> str | None:
    """A sentence naming the settings to check, or None when the failure is not a refusal they explain."""
    if _is_auth_refusal(exc):
        return _auth_sentence(settings)
    verify = exc.__context__
    if isinstance(verify, ssl.SSLCertVerificationError):
        return _certificate_sentence(verify, settings)
    return None


def _is_auth_refusal(exc: aiomqtt.MqttError) -> bool:
    if not isinstance(exc, aiomqtt.MqttCodeError):
        return False
    code = exc.rc.value if isinstance(exc.rc, ReasonCode) else exc.rc
    return code in _AUTH_CODES


def _password_origin(settings: MqttConfig) -> str:
    """Where the password came from, without the password."""
    if settings.password_file is not None:
        return f"the password in password_file {settings.password_file}"
    if settings.password_env is not None:
        return f"the password in ${settings.password_env} (password_env)"
    if settings.password is not None:
        return "password"
    return "no password (set password_file)"


def _auth_sentence(settings: MqttConfig) -> str:
    where = f"{settings.host}:{settings.port}"
    if settings.username is None:
        return f"the broker at {where} wants a user name and password: set [mqtt] username and password_file"
    return (
        f"the broker at {where} refused user {settings.username!r}: wrong user name or password, or the user may not "
        f"connect; check [mqtt] username and {_password_origin(settings)} against the broker's users"
    )


def _certificate_sentence(error: ssl.SSLCertVerificationError, settings: MqttConfig) -> str:
    where = f"{settings.host}:{settings.port}"
    reason = (error.verify_message or str(error)).rstrip(".")
    if error.verify_code in _NAME_MISMATCH_CODES:
        return (
            f"the certificate of the broker at {where} is not valid for the name {settings.host!r}: set [mqtt] host "
            "to a name or address the certificate lists"
        )
    trusted = f"[mqtt.tls] ca {settings.tls.ca}" if settings.tls.ca else "a CA in the system's trust store"
    return (
        f"the certificate of the broker at {where} cannot be trusted ({reason}): it is not signed by {trusted}; set "
        "[mqtt.tls] ca to the CA certificate that signed the broker's"
    )
