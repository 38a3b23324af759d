"""The data and features commands end to end: exit codes, outputs, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    # An existing folder as --out: said before any work, and nothing is left beside it.
    result = invoke("features", "build", "--profile", tmp_path / "p", "--as-of", "1997-10-01", "--out", tmp_path / "p")
    assert result.exit_code == 1
    assert result.output.strip() == f"error: --out {tmp_path / 'p'} is a folder: give the file's path, e.g. {tmp_path / 'p' / 'features.parquet'}"
    assert not (tmp_path / "p.tmp").exists()


def test_a_failed_parquet_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    import ibis

    from features.io import write_parquet

    class Broken(Exception):
        pass

    class Expr:
        def to_parquet(self, path: Path) -> None:
            Path(path).write_bytes(b"half")
            raise Broken

    with pytest.raises(Broken):
        write_parquet(Expr(), tmp_path / "out.parquet")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(IsADirectoryError, match="is a folder"):
        write_parquet(ibis.memtable({"a": [1]}), tmp_path)


def test_serve_stops_at_a_bad_rules_file_or_a_taken_port_with_the_reason(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Both used to start BentoML: a bad rules file left the API up but never ready, a taken
    port printed "serving on ..." and then a long traceback from BentoML's process manager."""
    import socket

    import serving.cli_serving

    started: list[object] = []
    monkeypatch.setattr(serving.cli_serving, "exec_server", lambda *a, **k: started.append(a))
    monkeypatch.setenv("CRMSCORE_PROJECT_DIR", str(tmp_path))
    bad = tmp_path / "my_tags.yaml"
    bad.write_text("version: 1\ntags:\n  churn_risk:\n    score: churn.probabilty\n    tiers: [{name: high, min: 0.5}]\n  lost:\n    when: churn_risks == 'high'\n")
    monkeypatch.setenv("CRMSCORE_TAGS_FILE", str(bad))

    result = invoke("serve", "--port", "3999")

    assert result.exit_code == 1 and not started
    lines = result.output.strip().splitlines()
    assert lines[0].startswith(f"error: {bad}:4:12: tag 'churn_risk': unknown score 'churn.probabilty' (scores: ")
    assert lines[0].endswith("did you mean 'churn.probability'?")
    assert lines[1].startswith(f"  {bad}:7:") and len(lines) == 2  # one line per problem
    assert "Traceback" not in result.output

    monkeypatch.delenv("CRMSCORE_TAGS_FILE")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = invoke("serve", "--port", port)
    assert result.exit_code == 1 and not started
    assert result.output.strip() == (
        f"error: cannot serve on 127.0.0.1:{port}: Address already in use (another server running? stop it, or pick another "
        "port: `crm-scoring serve --port N`, `make run PORT=N`)"
    )


def test_make_run_rescores_a_snapshot_of_other_champions_or_rules(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The API serves the versions that scored the latest run (`serving.engine.served_run`):
    `make run` after a promotion scores again, so that it serves the current champions."""
    from datetime import datetime
    from types import SimpleNamespace

    import training.registry
    from serving.cli_common import load_settings
    from serving.cli_serving import _stale_reason
    from serving.store import RunRecord
    from serving.tags import load_tag_rules

    monkeypatch.setenv("CRMSCORE_PROJECT_DIR", str(tmp_path))
    monkeypatch.setattr(training.registry, "champions", lambda settings=None: [SimpleNamespace(name="churn_propensity", version=2)])
    digest = load_tag_rules().digest
    settings = load_settings()

    def run(models: dict[str, str], rules: str) -> RunRecord:
        return RunRecord("r", datetime(2025, 6, 15), datetime(2025, 6, 15), None, 1, models, rules)

    assert _stale_reason(run({"churn_propensity": "2"}, digest), settings) is None
    assert _stale_reason(run({"churn_propensity": "1"}, digest), settings) == "the latest batch run was scored with other models than the champions"
    assert _stale_reason(run({"churn_propensity": "2"}, "0" * 64), settings) == "the latest batch run was scored with other tag rules"
