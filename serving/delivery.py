"""Trigger delivery: pending outbox events POSTed to a webhook, signed the Standard Webhooks way.

One event per request. The body is the event JSON of `serving.events.event_body` (compact,
UTF-8), with the headers::

    content-type:      application/json
    webhook-id:        the event id (stable across retries: the receiver's idempotency key)
    webhook-timestamp: unix seconds of this attempt
    webhook-signature: v1,<base64 HMAC-SHA256(key, f"{webhook-id}.{webhook-timestamp}.{body}")>

The key comes from ``CRMSCORE_WEBHOOK_SECRET``: ``whsec_<base64>`` (the Standard Webhooks
format) is base64-decoded, any other string is used as its UTF-8 bytes. Receivers verify with
`verify_signature` (or any Standard Webhooks library), reject timestamps too far from now
(replay) and de-duplicate on ``webhook-id``: delivery is at least once.

Outcomes (each attempt's outcome is committed before the next one starts, so a killed process
loses nothing: at worst the events in flight are sent again):

- 2xx: delivered.
- timeout, connection error, 5xx, 408, 429, other 4xx, 3xx (redirects are not followed): a
  failed attempt, retried after ``backoff * 2**(attempts-1)`` seconds (capped at
  ``max_backoff``, plus up to 10 % jitter); a ``Retry-After`` header (seconds or HTTP date)
  pushes the next attempt later, up to ``max_backoff``. After ``max_attempts`` attempts the
  event is dead-lettered (``triggers requeue`` brings dead letters back).
  Other 4xx are retried like 5xx, as the Standard Webhooks guidance says: a receiver answering
  401/403/404 is usually misconfigured (wrong secret, wrong path), and dead-lettering at the
  first answer would throw away a whole run's events in seconds; the bounded retries cost little.
- 410 Gone: the receiver asks the sender to stop. The attempt is recorded, the run stops at
  once and every event stays pending (nothing is dead-lettered); exit non-zero.

Hold: after any failed attempt the whole run pauses before its next POST, for
``backoff * 2**(failures-1)`` seconds where *failures* counts the run's failed rounds
since its last 2xx (requests in flight together that fail together are one round; same
cap, jitter and ``Retry-After`` as above). Events not sent because of a hold use up no
attempt, and until the next 2xx the run sends one event at a time. So a receiver that is
down, throttling (429) or deploying gets a few probes instead of the whole outbox at full
speed, and its events keep their attempts while it recovers: with the defaults a 5-minute
outage costs about a dozen attempts in all, not ten per event. When the run's failed
rounds in a row reach ``max_attempts`` (at least 3; about nine minutes of failures with
the defaults) while events are pending, the run stops and exits non-zero, naming the last
error, with the events left pending: a receiver that is down or misconfigured (wrong
secret: 401, wrong path: 404) is reported instead of being probed for days, and the next
run starts over. An event that keeps failing while others get through (a payload the
receiver rejects) is dead-lettered after ``max_attempts`` as before.

Order: events go out in outbox order (per customer, exits before entries); several customers
are sent concurrently (``concurrency``) but one customer's events of a batch go out one after
the other. Retries can still reorder a customer's events: receivers should rely on ``id``,
``previous_value``/``next_value`` and ``run_id`` rather than on arrival order.

With ``wait`` (the default) a run lasts until nothing is pending: it sleeps until the next
retry is due, so it ends with every event delivered or dead-lettered (or stopped: a 410, or
too many failed rounds in a row).
Without it, it makes one pass over the events due when it starts (those scheduled for
later, and the retries the pass itself schedules, stay pending; its holds are waited out):
the mode for a cron job.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from features.errors import CrmScoringError
from serving.events import event_body

if TYPE_CHECKING:
    import httpx

    from serving.store import ScoreStore

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
#: Receivers should reject a webhook-timestamp further than this from their clock (replay).
DEFAULT_TOLERANCE_SECONDS = 300
_ERROR_LIMIT = 300


class DeliveryError(CrmScoringError):
    """Trigger delivery cannot start or had to stop."""


class WebhookConfigError(DeliveryError):
    """The secret or the URL is missing or unusable."""


# --------------------------------------------------------------------------------------
# signing
# --------------------------------------------------------------------------------------


def signing_key(secret: str | bytes) -> bytes:
    """The HMAC key: ``whsec_<base64>`` decoded (Standard Webhooks format), else the raw bytes."""
    if isinstance(secret, bytes):
        key = secret
    else:
        text = secret.strip()
        if text.startswith(SECRET_PREFIX):
            try:
                key = base64.b64decode(text[len(SECRET_PREFIX):], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise WebhookConfigError("the webhook secret starts with 'whsec_' but the rest is not valid base64") from exc
        else:
            key = text.encode("utf-8")
    if not key:
        raise WebhookConfigError("the webhook secret is empty")
    return key


def require_secret(secret: str | bytes | None) -> bytes:
    """The signing key, or a clear error when no secret is configured (nothing is sent unsigned)."""
    if secret is None or (isinstance(secret, str) and not secret.strip()):
        raise WebhookConfigError("no webhook secret: set CRMSCORE_WEBHOOK_SECRET (e.g. whsec_<base64 of 24+ random bytes>)")
    return signing_key(secret)


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 over "id.timestamp.body">`` (one signature of the header)."""
    signed = message_id.encode() + b"." + str(int(timestamp)).encode() + b"." + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def webhook_headers(key: bytes, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": sign(key, message_id, timestamp, body),
    }


def verify_signature(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance_seconds: float | None = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """Whether a received webhook is authentic: for receivers (and the tests).

    ``headers`` is any mapping of the request headers (names case-insensitive); ``body`` the raw
    request body, exactly as received (do not re-serialise parsed JSON: a single space changes
    the signature). True when one of the space-separated ``v1,`` signatures matches (constant
    time compare) and, unless ``tolerance_seconds`` is None, the timestamp is within that many
    seconds of ``now``.
    """
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    message_id = lowered.get("webhook-id")
    timestamp_text = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not message_id or not timestamp_text or not signatures:
        return False
    try:
        timestamp = int(timestamp_text)
    except ValueError:
        return False
    if tolerance_seconds is not None:
        current = time.time() if now is None else now
        if abs(current - timestamp) > tolerance_seconds:
            return False
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    expected = sign(signing_key(secret), message_id, timestamp, raw)
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures.split() if candidate.startswith("v1,"))


def encode_body(row: Mapping[str, Any]) -> bytes:
    """The exact bytes sent (and signed): compact JSON, UTF-8."""
    return json.dumps(event_body(row), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# --------------------------------------------------------------------------------------
# policy and outcome of one attempt
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryPolicy:
    """How hard to try. Seconds everywhere."""

    max_attempts: int = 10
    backoff: float = 1.0
    max_backoff: float = 300.0
    timeout: float = 10.0
    concurrency: int = 4
    wait: bool = True
    #: Up to this share is added at random to each back-off (spreads retries of a burst).
    jitter: float = 0.1
    #: Due events read from the store per round.
    batch_size: int = 200

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise WebhookConfigError("max attempts must be at least 1")
        if self.backoff <= 0 or self.max_backoff <= 0 or self.timeout <= 0:
            raise WebhookConfigError("backoff, max backoff and timeout must be positive")
        if self.concurrency < 1 or self.batch_size < 1:
            raise WebhookConfigError("concurrency and batch size must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise WebhookConfigError("jitter must be between 0 and 1")


def retry_delay(
    attempts: int, policy: DeliveryPolicy, retry_after: float | None = None, rng: random.Random | None = None
) -> float:
    """Seconds to wait after the `attempts`-th failed attempt (1 for the first failure)."""
    # The exponent is capped: 2**1024 overflows a float, and max_backoff caps the delay anyway.
    delay = policy.backoff * 2.0 ** min(max(attempts - 1, 0), 64)
    if policy.jitter and rng is not None:
        delay *= 1 + rng.uniform(0, policy.jitter)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, policy.max_backoff)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None when absent or bad."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now.replace(tzinfo=UTC) if now is not None else datetime.now(UTC)
    return max((when - current).total_seconds(), 0.0)


@dataclass(frozen=True)
class AttemptOutcome:
    """What one POST did. `error` is a short reason kept in the outbox (no bodies, no PII)."""

    event_id: str
    ok: bool
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None
    gone: bool = False
    skipped: bool = False  # not sent (the run was stopping or holding): no attempt used


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:_ERROR_LIMIT]


def post_event(client: httpx.Client, url: str, key: bytes, row: Mapping[str, Any], now: Callable[[], float] = time.time) -> AttemptOutcome:
    """Sign and POST one event; never raises for HTTP or network trouble (that is an outcome)."""
    import httpx

    event_id = str(row["id"])
    body = encode_body(row)
    headers = webhook_headers(key, event_id, int(now()), body)
    try:
        response = client.post(url, content=body, headers=headers)
    except httpx.TransportError as exc:  # timeouts, refused / reset connections, protocol errors
        return AttemptOutcome(event_id, ok=False, error=_short(exc))
    code = response.status_code
    if 200 <= code < 300:
        return AttemptOutcome(event_id, ok=True, status_code=code)
    reason = f"HTTP {code} {response.reason_phrase}".strip()
    return AttemptOutcome(
        event_id,
        ok=False,
        status_code=code,
        error=reason[:_ERROR_LIMIT],
        retry_after=parse_retry_after(response.headers.get("retry-after")),
        gone=code == 410,
    )


# --------------------------------------------------------------------------------------
# the delivery loop
# --------------------------------------------------------------------------------------


@dataclass
class DeliveryReport:
    """What one `deliver` run did, and what is left."""

    attempts: int = 0
    delivered: int = 0
    retried: int = 0  # failed attempts scheduled again
    dead: int = 0  # dead-lettered by this run
    pending: int = 0  # still pending when the run ended
    dead_total: int = 0  # dead letters in the store (this run's and older ones)
    stopped: str | None = None  # why the run stopped early (410 Gone, or too many failed rounds in a row)
    elapsed: float = 0.0
    status_codes: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.stopped is None and self.dead == 0 and self.pending == 0

    def failure_reason(self) -> str | None:
        """One line for the CLI when the run did not deliver everything."""
        if self.stopped:
            return f"{self.stopped}; {self.pending:,} event(s) left pending"
        parts = []
        if self.dead:
            parts.append(f"{self.dead:,} event(s) dead-lettered (see `crm-scoring triggers export --status dead`)")
        if self.pending:
            parts.append(f"{self.pending:,} event(s) still pending (retries scheduled; run deliver again)")
        return "; ".join(parts) or None


def utc_now() -> datetime:
    """Now as naive UTC (the store's convention)."""
    return datetime.now(UTC).replace(tzinfo=None)


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        got = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        raise WebhookConfigError(f"--url must be an http(s) URL with a host, e.g. https://crm.example.com/hooks (got {got})")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when it is read
    except ValueError as exc:
        raise WebhookConfigError(f"--url has a bad port: {exc}") from None
    return url


def display_url(url: str) -> str:
    """Scheme and host only: webhook paths and queries often embed tokens; keep them out of logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return f"{parts.scheme}://{host}" if parts.scheme and host else "<url>"


#: A run stops after this many failed rounds in a row even when --max-attempts is lower.
MIN_FAILED_ROUNDS_TO_STOP = 3


class _Hold:
    """The run-wide pause after a failed attempt (see "Hold" in the module docstring).

    Set by the sending threads as soon as an attempt fails, so the others stop sending at
    once; read by them before each POST and by the loop before it fetches due events.
    """

    def __init__(self, policy: DeliveryPolicy, clock: Callable[[], datetime], rng: random.Random) -> None:
        self.policy = policy
        self.clock = clock
        self.rng = random.Random(rng.random())  # its own: used from the sending threads
        self._lock = threading.Lock()
        self._failures = 0  # failed rounds since the last 2xx
        self._epoch = 0  # moves on at each counted failure and each 2xx
        self._until: datetime | None = None
        self.last_error: str | None = None

    def epoch(self) -> int:
        """Read by a sender just before its POST (see `failed`)."""
        with self._lock:
            return self._epoch

    def failed(self, retry_after: float | None, error: str | None, sent_at_epoch: int) -> None:
        """A failed attempt. It counts as a new failure only when it was sent after the last
        counted failure or 2xx: requests in flight together that fail together (a receiver
        restart) are one failed round, not `concurrency` of them."""
        with self._lock:
            self.last_error = error
            if sent_at_epoch == self._epoch:
                self._failures += 1
                self._epoch += 1
            until = self.clock() + timedelta(seconds=retry_delay(max(self._failures, 1), self.policy, retry_after, self.rng))
            self._until = until if self._until is None else max(self._until, until)

    def succeeded(self) -> None:
        with self._lock:
            self._failures = 0
            self._epoch += 1

    def probing(self) -> bool:
        """True after a failure until the next 2xx: the run then sends one event at a time."""
        return self.failures_in_a_row() > 0

    def failures_in_a_row(self) -> int:
        with self._lock:
            return self._failures

    def remaining(self) -> float:
        """Seconds until the run may send again (0 when it may now)."""
        with self._lock:
            if self._until is None:
                return 0.0
            return max((self._until - self.clock()).total_seconds(), 0.0)


def _group_by_customer(events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        groups.setdefault(str(event["customer_id"]), []).append(event)
    return list(groups.values())


def deliver(
    store: ScoreStore,
    url: str,
    secret: str | bytes | None,
    policy: DeliveryPolicy = DeliveryPolicy(),
    *,
    client: httpx.Client | None = None,
    clock: Callable[[], datetime] = utc_now,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    on_progress: Callable[[DeliveryReport], None] | None = None,
) -> DeliveryReport:
    """Deliver the store's pending events to `url` (see the module docstring for the rules).

    Holds the store's delivery lock for the whole run (a second `deliver` on the same store
    fails at once rather than sending duplicates). Checks the secret and URL before touching
    anything: a missing secret raises `WebhookConfigError` and marks nothing.
    """
    import httpx

    key = require_secret(secret)
    check_url(url)
    rng = rng if rng is not None else random.Random()
    report = DeliveryReport()
    started = time.perf_counter()
    own_client = client is None
    if client is None:
        client = httpx.Client(
            timeout=httpx.Timeout(policy.timeout),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=policy.concurrency, max_keepalive_connections=policy.concurrency),
            headers={"user-agent": "crm-scoring-webhooks"},
        )
    try:
        with store.delivery_lock():
            _run(store, url, key, policy, client, clock, sleep, rng, report, on_progress)
    finally:
        if own_client:
            client.close()
        counts = store.event_counts()
        report.pending = counts["pending"]
        report.dead_total = counts["dead"]
        report.elapsed = time.perf_counter() - started
    return report


def _run(
    store: ScoreStore,
    url: str,
    key: bytes,
    policy: DeliveryPolicy,
    client: httpx.Client,
    clock: Callable[[], datetime],
    sleep: Callable[[float], None],
    rng: random.Random,
    report: DeliveryReport,
    on_progress: Callable[[DeliveryReport], None] | None,
) -> None:
    stop = threading.Event()
    hold = _Hold(policy, clock, rng)
    outcomes: queue.Queue[tuple[dict[str, Any], AttemptOutcome]] = queue.Queue()

    def send_group(group: list[dict[str, Any]]) -> None:
        # Exactly one outcome per event, whatever happens, so the recorder never waits forever.
        for event in group:
            if stop.is_set() or hold.remaining() > 0:
                outcomes.put((event, AttemptOutcome(str(event["id"]), ok=False, skipped=True)))
                continue
            epoch = hold.epoch()
            try:
                outcome = post_event(client, url, key, event)
            except Exception as exc:  # noqa: BLE001 - a bug must not hang the run; recorded as a failure
                outcome = AttemptOutcome(str(event["id"]), ok=False, error=_short(exc))
            if outcome.gone:
                stop.set()
            elif outcome.ok:
                hold.succeeded()
            else:
                hold.failed(outcome.retry_after, outcome.error, epoch)
            outcomes.put((event, outcome))

    pool = ThreadPoolExecutor(max_workers=policy.concurrency, thread_name_prefix="webhook")
    try:
        # One pass (no wait) covers the events due when it starts: retries it schedules are
        # for the next run, while its holds are slept through like a waiting run's.
        pass_started = clock()
        while not stop.is_set():
            paused = hold.remaining()
            if paused > 0:
                sleep(paused)
                continue
            # After a failure one event probes the receiver; full speed again after a 2xx.
            due = store.due_events(clock() if policy.wait else pass_started, limit=1 if hold.probing() else policy.batch_size)
            if not due:
                next_at = store.next_attempt_at()
                if next_at is None or not policy.wait:
                    break
                wait = (next_at - clock()).total_seconds()
                if wait > 0:
                    sleep(min(wait, policy.max_backoff))
                continue
            for group in _group_by_customer(due):
                pool.submit(send_group, group)
            for _ in range(len(due)):
                event, outcome = outcomes.get()
                _record(store, event, outcome, policy, clock, rng, report)
                if on_progress is not None:
                    on_progress(report)
            failures = hold.failures_in_a_row()
            if failures >= max(policy.max_attempts, MIN_FAILED_ROUNDS_TO_STOP) and store.event_counts()["pending"]:
                # Down or misconfigured for as long as one event's whole retry budget: stop
                # rather than probe for days; the events keep their attempts for the next run.
                report.stopped = (
                    f"the receiver at {display_url(url)} failed {failures} times in a row "
                    f"(last: {hold.last_error or 'failed'}): delivery stopped; run it again when the receiver is back"
                )
                break
    except BaseException:
        # Ctrl-C or a store error: send nothing more (what was sent and not recorded stays
        # pending and goes out again next time).
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if stop.is_set():
        report.stopped = f"the receiver at {display_url(url)} answered 410 Gone: delivery stopped"


def _record(
    store: ScoreStore,
    event: dict[str, Any],
    outcome: AttemptOutcome,
    policy: DeliveryPolicy,
    clock: Callable[[], datetime],
    rng: random.Random,
    report: DeliveryReport,
) -> None:
    """Commit one attempt's outcome (immediately: a killed run resumes from here)."""
    if outcome.skipped:
        return
    report.attempts += 1
    code = str(outcome.status_code) if outcome.status_code is not None else "network"
    report.status_codes[code] = report.status_codes.get(code, 0) + 1
    now = clock()
    if outcome.ok:
        store.mark_delivered(outcome.event_id, now)
        report.delivered += 1
        return
    attempts = int(event["attempts"]) + 1
    error = outcome.error or "failed"
    if attempts >= policy.max_attempts and not outcome.gone:
        store.dead_letter(outcome.event_id, error)
        report.dead += 1
        return
    delay = retry_delay(attempts, policy, outcome.retry_after, rng)
    store.record_failure(outcome.event_id, error, now + timedelta(seconds=delay))
    report.retried += 1
