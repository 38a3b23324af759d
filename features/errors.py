"""Specific exceptions raised by the feature layer."""

from __future__ import annotations


class CrmScoringError(Exception):
    """Base class for every error crm-scoring raises on purpose."""


class ProfileError(CrmScoringError):
    """The profile store cannot be read (missing folder, table or required column)."""


class ProfileValidationError(CrmScoringError):
    """Too many rows were rejected; carries the validation report."""

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class FeatureError(CrmScoringError):
    """A feature or label computation was asked for something it cannot do."""
