"""The feature side's settings: read from the environment (prefix CRMSCORE_) only when constructed.

Commands and the service construct the one object of every setting,
`serving.settings.CrmScoringSettings`, which is a `FeatureSettings` too; library code that
only builds features may construct this part alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from features.schema import DEFAULT_PII_COLUMNS

if TYPE_CHECKING:
    from features.pipeline import FeatureParams


class FeatureSettings(BaseSettings):
    """Configuration of profile loading and feature builds. Construct once and pass it in."""

    model_config = SettingsConfigDict(env_prefix="CRMSCORE_", extra="ignore")

    project_dir: Path = Field(default_factory=Path.cwd, description="Root for default local stores.")
    pii_columns: tuple[str, ...] = Field(
        default=DEFAULT_PII_COLUMNS,
        description="Customer columns that are never features and never logged.",
    )
    max_reject_share: float = Field(
        default=0.01, ge=0.0, le=1.0, description="Fail a run when a larger share of rows is rejected."
    )
    duckdb_memory_limit: str | None = Field(
        default=None, description="DuckDB memory_limit for feature builds, e.g. '4GB'."
    )
    duckdb_threads: int | None = Field(default=None, ge=1)

    def feature_params(self) -> FeatureParams:
        """The feature parameters these settings imply (the PII columns are never features).

        Every command that builds features (`features build`, `train`, `score`, the API)
        starts from these, so a model is scored with the features it was trained on.
        """
        from features.families.attributes import AttributeParams
        from features.pipeline import FeatureParams

        return FeatureParams(attributes=AttributeParams(pii_columns=self.pii_columns))
