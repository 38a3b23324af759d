"""The data and features commands end to end: exit codes, outputs, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from typer.testing import CliRunner

from serving.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_import_validate_and_build_cdnow_sample(tmp_path: Path) -> None:
    profile = tmp_path / "cdnow"
    result = invoke("data", "import-cdnow", "--sample", "--out", profile)
    assert result.exit_code == 0, result.output
    assert "2,357 customers, 6,919 orders" in result.output

    result = invoke("data", "validate", "--profile", profile)
    assert result.exit_code == 0, result.output
    assert "profile is valid" in result.output

    out = tmp_path / "features.parquet"
    result = invoke("features", "build", "--profile", profile, "--as-of", "1997-10-01", "--out", out)
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.num_rows == 2357
    assert {"customer_id", "frequency", "recency_days", "T_days", "monetary_value"} <= set(table.column_names)


def test_generate_is_deterministic_and_valid(tmp_path: Path) -> None:
    for name in ("a", "b"):
        result = invoke("data", "generate", "--customers", "300", "--seed", "5", "--out", tmp_path / name)
        assert result.exit_code == 0, result.output
    for file in ("customers.parquet", "orders.parquet", "events.parquet", "truth.parquet"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
    result = invoke("data", "validate", "--profile", tmp_path / "a")
    assert result.exit_code == 0, result.output


def test_bad_rows_fail_with_one_line_and_keep_the_rejects(tmp_path: Path) -> None:
    profile = tmp_path / "bad"
    profile.mkdir()
    (profile / "customers.csv").write_text("customer_id,created_at\nc1,2025-01-01\nc2,nope\n")
    (profile / "orders.csv").write_text("order_id,customer_id,ordered_at,amount\no1,c1,2025-02-01,-3\n")
    out = tmp_path / "features.parquet"
    result = invoke("features", "build", "--profile", profile, "--as-of", "2025-03-01", "--out", out)
    assert result.exit_code == 1
    error_lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "above the 1.00% limit" in error_lines[0]
    rejects = (tmp_path / "features.rejects.csv").read_text()
    assert "created_at 'nope' is not a timestamp" in rejects and "amount -3.0 is negative" in rejects
    assert not out.exists()


def test_missing_profile_and_bad_date_are_one_line_errors(tmp_path: Path) -> None:
    result = invoke("features", "build", "--profile", tmp_path / "nope", "--as-of", "2025-01-01", "--out", tmp_path / "f.parquet")
    assert result.exit_code == 1 and "does not exist" in result.output
    result = invoke("data", "import-cdnow", "--sample", "--out", tmp_path / "p")
    result = invoke("features", "build", "--profile", tmp_path / "p", "--as-of", "soon", "--out", tmp_path / "f.parquet")
    assert result.exit_code == 1 and "'soon' is not an ISO date" in result.output
