"""API keys from the environment or a file (serving.settings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.settings import ServingSettings, SettingsError


def test_keys_from_the_variable_and_the_file_one_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("k-file-1\n\n  k-shared  \n")
    monkeypatch.setenv("CRMSCORE_API_KEYS", "k-env-1, k-shared,,")
    monkeypatch.setenv("CRMSCORE_API_KEYS_FILE", str(key_file))
    monkeypatch.setenv("CRMSCORE_ADMIN_KEYS", "k-admin")

    settings = ServingSettings()

    assert settings.resolved_api_keys()[:3] == ["k-env-1", "k-shared", "k-file-1"]
    assert "k-admin" in settings.resolved_admin_keys()


@pytest.mark.parametrize("key", ["kéy", "key\twith-tab", "ключ"])
def test_a_key_a_client_could_not_send_is_refused_at_start_up(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Headers arrive as Latin-1 bytes and clients send UTF-8: such a key would only ever give 401."""
    monkeypatch.setenv("CRMSCORE_API_KEYS", f"good-key,{key}")
    with pytest.raises(SettingsError, match=r"CRMSCORE_API_KEYS\(_FILE\) holds a key with characters other than printable ASCII"):
        ServingSettings().resolved_api_keys()


def test_an_unreadable_key_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRMSCORE_API_KEYS", raising=False)
    monkeypatch.setenv("CRMSCORE_API_KEYS_FILE", str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match=r"cannot read CRMSCORE_API_KEYS_FILE .*missing"):
        ServingSettings().resolved_api_keys()
