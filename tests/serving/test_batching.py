"""MicroBatcher: how `/v1/score` requests are grouped into feature queries (no models needed)."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from serving.service import MicroBatcher


@dataclass
class FakeRequest:
    name: str
    customers: list[int] = field(default_factory=lambda: [1])


class Recorder:
    """prepare/finish doubles: record each batch, answer every request with its name."""

    def __init__(self, prepare_seconds: float = 0.0, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.prepare_seconds = prepare_seconds
        self.fail_on = fail_on
        self._lock = threading.Lock()

    def prepare(self, requests: list[FakeRequest]) -> list[FakeRequest]:
        with self._lock:
            self.batches.append([r.name for r in requests])
        if self.fail_on is not None and any(r.name == self.fail_on for r in requests):
            raise RuntimeError(f"cannot prepare {self.fail_on}")
        time.sleep(self.prepare_seconds)
        return requests

    @staticmethod
    def finish(requests: list[FakeRequest]) -> list[Any]:
        return [f"scored {r.name}" for r in requests]


@pytest.mark.parametrize("lanes", [1, 2])
def test_concurrent_requests_go_into_one_batch_in_order(lanes: int) -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder.prepare, recorder.finish, max_customers=100, lanes=lanes, max_wait=0.05)

    async def main() -> list[Any]:
        return await asyncio.gather(*(batcher.submit(FakeRequest(f"r{i}")) for i in range(5)))

    assert asyncio.run(main()) == [f"scored r{i}" for i in range(5)]
    assert recorder.batches == [[f"r{i}" for i in range(5)]]


def test_a_lone_client_is_never_delayed() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder.prepare, recorder.finish, max_customers=100, max_wait=1.0)

    async def main() -> float:
        started = time.perf_counter()
        for i in range(5):
            assert await batcher.submit(FakeRequest(f"r{i}")) == f"scored r{i}"
        return time.perf_counter() - started

    assert asyncio.run(main()) < 0.5  # five requests, far below one max_wait
    assert recorder.batches == [[f"r{i}"] for i in range(5)]


def test_steady_clients_are_served_together_each_round() -> None:
    """Closed-loop clients answered together come back at slightly different times; the
    next batch waits for all of them instead of splitting into groups."""
    recorder = Recorder(prepare_seconds=0.02)
    batcher = MicroBatcher(recorder.prepare, recorder.finish, max_customers=100, max_wait=0.05)
    rng = random.Random(0)

    async def client(number: int) -> None:
        for round_ in range(6):
            await asyncio.sleep(rng.uniform(0, 0.01))  # the client's turnaround
            assert await batcher.submit(FakeRequest(f"c{number}-{round_}")) == f"scored c{number}-{round_}"

    async def main() -> None:
        await asyncio.gather(*(client(n) for n in range(4)))

    asyncio.run(main())
    sizes = [len(batch) for batch in recorder.batches]
    assert sum(sizes) == 24
    # The first request finds no one else in flight and goes alone (so its client ends a
    # round early); from then on each batch holds every client.
    assert sizes[0] == 1 and sizes[1:-1] == [4] * (len(sizes) - 2) and sizes[-1] == 3, sizes


def test_max_customers_bounds_a_batch() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder.prepare, recorder.finish, max_customers=4, max_wait=0.0)

    async def main() -> None:
        await asyncio.gather(*(batcher.submit(FakeRequest(f"r{i}", customers=[1, 2])) for i in range(4)))

    asyncio.run(main())
    assert [len(batch) for batch in recorder.batches] == [2, 2]


def test_a_failed_batch_fails_its_callers_only() -> None:
    recorder = Recorder(fail_on="bad")
    batcher = MicroBatcher(recorder.prepare, recorder.finish, max_customers=100, max_wait=0.0)

    async def main() -> None:
        with pytest.raises(RuntimeError, match="cannot prepare bad"):
            await batcher.submit(FakeRequest("bad"))
        assert await batcher.submit(FakeRequest("good")) == "scored good"  # the lanes keep serving

    asyncio.run(main())


@pytest.mark.parametrize("stage", ["prepare", "finish"])
def test_a_request_that_breaks_its_batch_fails_alone(stage: str) -> None:
    """The others of its batch are scored one by one and answered; only it gets the error."""
    recorder = Recorder(fail_on="bad" if stage == "prepare" else None)

    def finish(requests: list[FakeRequest]) -> list[Any]:
        if any(r.name == "bad" for r in requests):
            raise OverflowError("cannot finish bad")
        return Recorder.finish(requests)

    batcher = MicroBatcher(recorder.prepare, finish, max_customers=100, max_wait=0.05)

    async def main() -> list[Any]:
        return await asyncio.gather(*(batcher.submit(FakeRequest(n)) for n in ("a", "bad", "c")), return_exceptions=True)

    a, bad, c = asyncio.run(main())
    assert (a, c) == ("scored a", "scored c")
    assert isinstance(bad, RuntimeError if stage == "prepare" else OverflowError)
    assert recorder.batches == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]


def test_a_feature_process_failure_is_every_callers() -> None:
    """Not a request's fault: retrying each alone would only repeat it."""
    from serving.online import OnlineFeatureError

    calls: list[int] = []

    def prepare(requests: list[FakeRequest]) -> Any:
        calls.append(len(requests))
        raise OnlineFeatureError("the feature process stopped")

    batcher = MicroBatcher(prepare, Recorder.finish, max_customers=100, max_wait=0.05)

    async def main() -> list[Any]:
        return await asyncio.gather(*(batcher.submit(FakeRequest(f"r{i}")) for i in range(3)), return_exceptions=True)

    assert all(isinstance(outcome, OnlineFeatureError) for outcome in asyncio.run(main()))
    assert calls == [3]


def test_two_lanes_prepare_the_next_batch_while_one_is_finished() -> None:
    """With two lanes the second batch's features start before the first batch is scored."""
    events: list[str] = []

    def prepare(requests: list[FakeRequest]) -> list[FakeRequest]:
        events.append(f"prepare {requests[0].name}")
        return requests

    def finish(requests: list[FakeRequest]) -> list[str]:
        events.append(f"finish {requests[0].name} starts")
        time.sleep(0.1)
        events.append(f"finish {requests[0].name} ends")
        return [r.name for r in requests]

    batcher = MicroBatcher(prepare, finish, max_customers=100, lanes=2, max_wait=0.0)

    async def main() -> list[str]:
        first = asyncio.ensure_future(batcher.submit(FakeRequest("a")))
        await asyncio.sleep(0.05)  # batch "a" is being finished
        second = asyncio.ensure_future(batcher.submit(FakeRequest("b")))
        return list(await asyncio.gather(first, second))

    assert asyncio.run(main()) == ["a", "b"]
    assert events.index("prepare b") < events.index("finish a ends")
