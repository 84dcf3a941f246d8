"""[web] in config.toml: defaults, the token from a file, and refusals that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from spkidd.config import ConfigError, WebConfig, load_config

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
    for key in ("enabled", "host", "port", "token", "token_file", "max_upload_mb", "max_connections"):
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
