"""Settings from the environment (serving.settings): API keys from a variable or a file,
the guard that checks them, and the warning for variables no setting reads."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from serving.settings import ServingSettings, SettingsError, known_variables, unknown_variables

REPO = Path(__file__).resolve().parents[2]


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


def test_a_misspelt_variable_is_named_with_the_setting_it_resembles() -> None:
    environ = {
        "CRMSCORE_API_KEY": "k",  # the setting is CRMSCORE_API_KEYS
        "CRMSCORE_WEBHOOK_SECRETS": "s",
        "CRMSCORE_SOMETHING_ELSE": "1",
        "CRMSCORE_API_KEYS": "k",
        "crmscore_store_dir": "/data/scores",  # the settings read names in any case
        "CRMSCORE_TRACKING_URI": "sqlite:///x.db",  # training's setting
        "CRMSCORE_PII_COLUMNS": '["email"]',  # the features' setting
        "MLFLOW_TRACKING_URI": "sqlite:///x.db",
    }

    assert unknown_variables(environ) == [
        "CRMSCORE_API_KEY is not a crm-scoring setting and is ignored; did you mean CRMSCORE_API_KEYS?",
        "CRMSCORE_SOMETHING_ELSE is not a crm-scoring setting and is ignored",
        "CRMSCORE_WEBHOOK_SECRETS is not a crm-scoring setting and is ignored; did you mean CRMSCORE_WEBHOOK_SECRET?",
    ]


def test_every_variable_the_docs_name_is_a_setting() -> None:
    documented = set()
    for page in ("README.md", "BENCHMARKS.md"):
        documented |= set(re.findall(r"CRMSCORE_[A-Z_]*[A-Z]", (REPO / page).read_text(encoding="utf-8")))
    documented -= {"CRMSCORE_ONLINE", "CRMSCORE_BATCH"}  # "CRMSCORE_ONLINE_*"-style families of names
    assert documented and documented <= known_variables(), sorted(documented - known_variables())


def test_the_cli_warns_about_a_misspelt_variable() -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CRMSCORE_")}
    env["CRMSCORE_ADMIN_KEY"] = "k"
    cli = str(Path(sys.executable).with_name("crm-scoring"))
    result = subprocess.run([cli, "models", "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "warning: CRMSCORE_ADMIN_KEY is not a crm-scoring setting and is ignored; did you mean CRMSCORE_ADMIN_KEYS?" in result.stderr


def test_one_settings_object_reads_every_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DESIGN: configuration is one typed object. Each package's part reads its own variables,
    and the one object built at the edge is accepted wherever a part is expected."""
    from features.settings import FeatureSettings
    from serving.settings import CrmScoringSettings
    from training.config import TrainingSettings

    monkeypatch.setenv("CRMSCORE_PROJECT_DIR", str(tmp_path))
    monkeypatch.delenv("CRMSCORE_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("CRMSCORE_MAX_REJECT_SHARE", "0.25")  # features
    monkeypatch.setenv("CRMSCORE_EXPERIMENT_NAME", "nightly")  # training
    monkeypatch.setenv("CRMSCORE_BATCH_WAIT_MS", "3")  # serving

    settings = CrmScoringSettings()

    assert isinstance(settings, FeatureSettings) and isinstance(settings, TrainingSettings) and isinstance(settings, ServingSettings)
    assert (settings.max_reject_share, settings.experiment_name, settings.batch_wait_ms) == (0.25, "nightly", 3.0)
    assert settings.resolved_store_dir == tmp_path / "scores"
    assert settings.resolved_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    parts = {name for part in (FeatureSettings, TrainingSettings, ServingSettings) for name in part.model_fields}
    assert known_variables() == {f"CRMSCORE_{name.upper()}" for name in parts}


@pytest.mark.parametrize(
    ("variable", "value", "command"),
    [
        ("CRMSCORE_MAX_REJECT_SHARE", "2", ["features", "build", "--profile", "p", "--as-of", "2025-01-01", "--out", "f.parquet"]),
        ("CRMSCORE_PROMOTION_TOLERANCE_AUC", "abc", ["models", "list"]),
        ("CRMSCORE_MAX_BODY_BYTES", "0", ["triggers", "export", "--format", "jsonl"]),
        ("CRMSCORE_PII_COLUMNS", "email", ["score", "--profile", "p", "--as-of", "2025-01-01"]),  # a list is JSON
    ],
)
def test_a_bad_setting_is_one_line_naming_it(variable: str, value: str, command: list[str], tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMSCORE_")}
    env |= {"CRMSCORE_PROJECT_DIR": str(tmp_path), variable: value}
    done = subprocess.run([str(Path(sys.executable).with_name("crm-scoring")), *command], cwd=tmp_path, env=env | {"PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: bad setting: {variable}"), done.stderr
    assert not (tmp_path / "scores").exists()  # nothing written
