"""API keys from the environment or a file (serving.settings), and the guard that checks them."""

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


def test_without_configured_keys_every_v1_call_is_refused() -> None:
    """No keys must not mean an open API: the guard refuses every token, admin ones too."""
    from serving import service

    def status(token: str | None, path: str = "/v1/models") -> int | None:
        headers = [(b"authorization", f"Bearer {token}".encode())] if token is not None else []
        scope = {"type": "http", "path": path, "root_path": "", "method": "GET", "headers": headers}
        problem = service.Guard._problem(scope)
        return None if problem is None else problem.status_code

    saved = getattr(service.app.state, "keys", None)
    try:
        service.app.state.keys = service.KeyChecker([], [])
        assert [status(None), status(""), status("anything"), status("x", "/v1/admin/reload")] == [401, 401, 401, 401]
        assert status(None, "/v1/docs") is None  # the API documents itself without a key (health is outside /v1)

        service.app.state.keys = service.KeyChecker(["k-api"], ["k-admin"])
        assert [status("k-api"), status("k-admin"), status("k-api", "/v1/admin/reload"), status("k-admin", "/v1/admin/reload")] == [
            None, None, 403, None,
        ]
    finally:
        service.app.state.keys = saved
