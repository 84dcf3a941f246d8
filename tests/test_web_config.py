"""[web] in config.toml: defaults, the token from a file, and refusals that name the key."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from spkidd.config import ConfigError, WebConfig, load_config
from tests.support.tls import self_signed

BASE = 'model = "m.safetensors"\n[[sources]]\nname = "k"\nkind = "mic"\n'


def _load(tmp_path: Path, web: str) -> WebConfig:
    path = tmp_path / "config.toml"
    path.write_text(BASE + web)
    path.chmod(0o600)
    return load_config(path).web


def test_the_page_is_off_by_default_and_listens_on_loopback(tmp_path: Path) -> None:
    web = _load(tmp_path, "")
    assert web.enabled is False and web.host == "127.0.0.1" and web.loopback_only and web.token is None


def test_the_repository_config_documents_every_web_key() -> None:
    repo = Path(__file__).resolve().parents[1]
    shipped = load_config(repo / "config.toml").web
    text = (repo / "config.toml").read_text()
    section = text[text.index("[web]") :]
    for key in (
        "enabled",
        "host",
        "port",
        "token",
        "token_file",
        "tls_cert",
        "tls_key",
        "max_upload_mb",
        "max_connections",
    ):
        assert f"{key} =" in section, key
    assert shipped.enabled is False and shipped.loopback_only


def test_token_file_is_read_and_hidden_from_repr(tmp_path: Path) -> None:
    (tmp_path / "web.token").write_text("s3cret\n")
    web = _load(tmp_path, '[web]\nhost = "0.0.0.0"\ntoken_file = "web.token"\n')
    assert web.token == "s3cret" and not web.loopback_only and "s3cret" not in repr(web)


@pytest.mark.parametrize(
    ("web", "message"),
    [
        ("[web]\nport = 70000\n", "[web] port 70000 out of range"),
        ('[web]\ntoken = "a"\ntoken_file = "t"\n', "give only one of token, token_file"),
        ('[web]\ntoken = " "\n', "token must not be empty"),
        ('[web]\ntoken_file = "absent.token"\n', "[web] token_file: cannot read"),
        ("[web]\nenable = true\n", "[web] unknown key 'enable'"),
    ],
)
def test_bad_web_settings_name_the_key(tmp_path: Path, web: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, web)
    assert message in str(caught.value) and str(tmp_path) in str(caught.value)


def test_tls_files_are_relative_to_the_config_and_make_a_server_context(tmp_path: Path) -> None:
    self_signed(tmp_path)
    web = _load(tmp_path, '[web]\nenabled = true\ntls_cert = "web.crt"\ntls_key = "web.key"\n')
    assert web.tls_cert == tmp_path / "web.crt" and web.tls_key == tmp_path / "web.key"
    assert web.tls_context() is not None


def test_tls_files_it_cannot_use_are_refused_at_load_in_words(tmp_path: Path) -> None:
    """A broken certificate is a configuration error (exit 2: systemd does not restart it for ever), said in words
    rather than OpenSSL's "[SSL] PEM lib"."""
    cert, key = self_signed(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, other_key = self_signed(other)
    (tmp_path / "notes.txt").write_text("not a certificate")
    cases = {
        f'tls_cert = "{tmp_path / "absent.crt"}"': "No such file or directory",
        'tls_cert = "notes.txt"': "not a PEM certificate and private key",
        f'tls_cert = "{cert}"': "not a PEM certificate and private key (without tls_key",
        f'tls_cert = "{cert}"\ntls_key = "{other_key}"': "the key does not belong to the certificate",
        f'tls_key = "{key}"': "tls_key needs tls_cert",
    }
    for lines, reason in cases.items():
        with pytest.raises(ConfigError) as caught:
            _load(tmp_path, f"[web]\nenabled = true\n{lines}\n")
        assert reason in str(caught.value) and "[web]" in str(caught.value), (lines, str(caught.value))


def test_a_password_over_the_network_without_tls_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = self_signed(tmp_path)
    network = '[web]\nenabled = true\nhost = "0.0.0.0"\ntoken = "s3cret"\n'
    with caplog.at_level(logging.WARNING, logger="spkidd.config"):
        _load(tmp_path, network)
    assert "crosses the network in plain text" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="spkidd.config"):
        _load(tmp_path, network + f'tls_cert = "{cert}"\ntls_key = "{key}"\n')
    assert "plain text" not in caplog.text


def test_the_page_address_home_assistant_links_to(tmp_path: Path) -> None:
    """Only an address other devices can open: the configured public_url, or the one machine address the page
    listens on; never loopback (every device's own) or 0.0.0.0, and nothing while the page is off."""
    cert, key = self_signed(tmp_path)
    tls = f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
    cases = {
        "": None,
        'host = "0.0.0.0"\n': None,
        'host = "::"\n': None,
        'host = "192.168.1.20"\n': "http://192.168.1.20:8730/",
        f'host = "192.168.1.20"\nport = 8443\n{tls}': "https://192.168.1.20:8443/",
        'host = "fd00::20"\n': "http://[fd00::20]:8730/",
        'host = "0.0.0.0"\npublic_url = "https://spkidd.local:8730/"\n': "https://spkidd.local:8730/",
    }
    for lines, url in cases.items():
        assert _load(tmp_path, f"[web]\nenabled = true\n{lines}").page_url == url, lines
    assert _load(tmp_path, '[web]\nhost = "192.168.1.20"\n').page_url is None, "the page is off"
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, '[web]\npublic_url = "spkidd.local:8730"\n')
    assert "public_url must be an http:// or https:// address" in str(caught.value)
