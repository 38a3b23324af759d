"""The one typed settings object, `CrmScoringSettings`, and its serving part.

Every setting of crm-scoring is a field of `CrmScoringSettings`, read from the environment
(prefix ``CRMSCORE_``, e.g. ``CRMSCORE_STORE_DIR``, ``CRMSCORE_API_KEYS``,
``CRMSCORE_EXPERIMENT_NAME``, ``CRMSCORE_MAX_REJECT_SHARE``) only when constructed. A CLI
command or the service constructs it once and passes it in. It is made of three parts, one
per package, so that each package types what it reads without importing the layers above
it: `features.settings.FeatureSettings`, `training.config.TrainingSettings` and
`ServingSettings` here; the object is an instance of all three.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

from features.errors import CrmScoringError
from features.settings import FeatureSettings
from training.config import TrainingSettings

_KEY_SEPARATORS = re.compile(r"[,\n\r]+")


class SettingsError(CrmScoringError):
    """A setting points at something unusable (e.g. an unreadable key file)."""


def _split_keys(text: str | None) -> list[str]:
    """Keys from a comma / line separated list (blank entries and surrounding spaces dropped)."""
    if not text:
        return []
    return [k.strip() for k in _KEY_SEPARATORS.split(text) if k.strip()]


def _keys(inline: SecretStr | None, file: Path | None, variable: str) -> list[str]:
    keys = _split_keys(inline.get_secret_value() if inline is not None else None)
    if file is not None:
        try:
            keys += _split_keys(Path(file).read_text(encoding="utf-8"))
        except OSError as exc:
            raise SettingsError(f"cannot read {variable} {file}: {exc.strerror or exc}") from exc
    # HTTP headers are read as Latin-1, while clients send UTF-8: a key with other characters
    # would never match. Said at start-up rather than as 401s.
    if any(not (key.isascii() and key.isprintable()) for key in keys):
        raise SettingsError(f"{variable.removesuffix('_FILE')}(_FILE) holds a key with characters other than printable ASCII; use e.g. `openssl rand -hex 32`")
    return list(dict.fromkeys(keys))  # de-duplicated, order kept


class ServingSettings(BaseSettings):
    """Configuration for batch scoring, the scoring API and trigger delivery."""

    model_config = SettingsConfigDict(env_prefix="CRMSCORE_", extra="ignore")

    project_dir: Path = Field(default_factory=Path.cwd, description="Root for default local stores.")
    store_dir: Path | None = Field(
        default=None, description="Score store: runs, snapshots and the event outbox (default: <project_dir>/scores)."
    )
    tags_file: Path | None = Field(default=None, description="Tag rules YAML (default: the rules shipped with the package).")

    # API keys (bearer): comma / line separated, inline or in a file.
    api_keys: SecretStr | None = Field(default=None, description="API keys for /v1 (comma or line separated).")
    api_keys_file: Path | None = Field(default=None, description="File with API keys, one per line.")
    admin_keys: SecretStr | None = Field(default=None, description="Admin keys (also valid as API keys).")
    admin_keys_file: Path | None = Field(default=None, description="File with admin keys, one per line.")

    # API limits.
    max_body_bytes: int = Field(default=10_000_000, ge=1, description="Largest accepted request body.")
    max_customers_per_request: int = Field(default=1_000, ge=1, description="Largest batch in one scoring request.")
    max_concurrent_requests: int = Field(default=64, ge=1, description="Scoring requests in flight before 429.")
    request_timeout_seconds: float = Field(default=30.0, gt=0, description="Scoring time limit per request (then 503).")
    online_workers: int = Field(default=4, ge=1, description="Feature table sets for inline profiles (in-process engines).")
    batch_lanes: int = Field(
        default=1, ge=1, le=8, description="/v1/score batches in flight at once (one computing features, others scoring)."
    )
    batch_wait_ms: float = Field(
        default=8.0, ge=0, description="Longest wait for more /v1/score requests to batch with one (see MicroBatcher)."
    )
    online_parallelism: int = Field(
        default=2,
        ge=1,
        description="Feature processes (in-process engines: DuckDB connections) running one batch's feature "
        "statements side by side, each its share.",
    )
    online_pin_threads: bool = Field(
        default=True,
        description="Pin each feature process (in-process engines: each connection's helper thread) to its own CPU "
        "(faster after pauses on small VMs, and also next to a busy process on two cores: see BENCHMARKS.md).",
    )
    prediction_threads: int = Field(
        default=0,
        ge=0,
        description="LightGBM threads for the API's predictions and reasons (0: one per CPU this process may use). "
        "Results do not depend on it.",
    )
    online_feature_process: bool = Field(
        default=True,
        description="Compute the API's online features in child processes (DuckDB's client and request handling "
        "would otherwise queue for the GIL).",
    )

    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Signing secret for trigger webhooks: 'whsec_<base64>' (Standard Webhooks) or any string.",
    )

    @property
    def resolved_prediction_threads(self) -> int:
        if self.prediction_threads:
            return self.prediction_threads
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    @property
    def resolved_store_dir(self) -> Path:
        return self.store_dir if self.store_dir is not None else self.project_dir / "scores"

    def resolved_api_keys(self) -> list[str]:
        """API keys from CRMSCORE_API_KEYS and CRMSCORE_API_KEYS_FILE."""
        return _keys(self.api_keys, self.api_keys_file, "CRMSCORE_API_KEYS_FILE")

    def resolved_admin_keys(self) -> list[str]:
        """Admin keys from CRMSCORE_ADMIN_KEYS and CRMSCORE_ADMIN_KEYS_FILE."""
        return _keys(self.admin_keys, self.admin_keys_file, "CRMSCORE_ADMIN_KEYS_FILE")


class CrmScoringSettings(ServingSettings, TrainingSettings, FeatureSettings):
    """Every crm-scoring setting (features, training, serving) in one object. Construct once at
    the edge and pass it in: it is accepted wherever one of its parts is expected."""

    model_config = SettingsConfigDict(env_prefix="CRMSCORE_", extra="ignore")


PREFIX = "CRMSCORE_"


def read_settings() -> CrmScoringSettings:
    """The settings from the environment; a bad value is a `SettingsError` naming each variable."""
    try:
        return CrmScoringSettings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{PREFIX}{'_'.join(str(part) for part in error['loc'][:1]).upper()}={error.get('input')!r}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
        raise SettingsError(f"bad setting: {problems}") from None
    except PydanticSettingsError as exc:  # a list or mapping setting whose value is not JSON
        field = re.search(r'field "(\w+)"', str(exc))
        name = f"{PREFIX}{field.group(1).upper()}" if field else "a CRMSCORE_ variable"
        raise SettingsError(f'bad setting: {name} is not valid JSON (a list is written ["email", "phone"])') from None


def known_variables() -> frozenset[str]:
    """Every `CRMSCORE_` variable the settings read."""
    return frozenset(f"{PREFIX}{name.upper()}" for name in CrmScoringSettings.model_fields)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One line per `CRMSCORE_` variable that no setting reads, with the nearest known name.

    The settings ignore variables they do not know, so a misspelt one (`CRMSCORE_API_KEY` for
    `CRMSCORE_API_KEYS`) would otherwise be dropped without a word.
    Names are matched without regard to case, as the settings read them.
    """
    known = known_variables()
    lines = []
    for variable in sorted(v for v in environ if v.upper().startswith(PREFIX) and v.upper() not in known):
        close = difflib.get_close_matches(variable.upper(), known, n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]}?" if close else ""
        lines.append(f"{variable} is not a crm-scoring setting and is ignored{hint}")
    return lines
