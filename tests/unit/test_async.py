"""async def jobs, async step functions and every *_async twin."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from _api_helpers import Recorder, SimulatedCrash, wait_for_status
from pydantic import BaseModel

from durably import (
    AsyncStepContext,
    BatchItem,
    Durably,
    InputValidationError,
    InvalidRunStateError,
    RunFailedError,
    RunNotFoundError,
    WaitTimeoutError,
    create_durably,
    define_job,
)
from durably.plugins import with_log_persistence


class Point(BaseModel):
    x: int
    y: int


class Out(BaseModel):
    total: int


def _make_async_job(calls: Counter[str], name: str = "async-job") -> Any:
    @define_job(name=name, output=Out)
    async def job(step: AsyncStepContext, payload: Any) -> Out:
        def sync_part() -> int:
            calls["sync"] += 1
            return payload["a"]

        async def async_part() -> int:
            calls["async"] += 1
            await asyncio.sleep(0)
            return payload["b"]

        a = await step.run("sync-fn", sync_part)
        b = await step.run("async-fn", async_part)
        step.progress(2, 2)
        step.log.info("summed")
        return Out(total=a + b)

    return job


@define_job(name="sync-job", input=dict[str, Any])
def sync_job(step: Any, payload: Any) -> int:
    if payload.get("fail"):
        raise RuntimeError("sync failure")
    value = int(step.run("one", lambda: payload.get("v", 1)))
    step.log.info("one done", {"value": value})
    return value


def test_async_job_runs_sync_and_async_step_functions_via_process_one(durably: Durably) -> None:
    calls: Counter[str] = Counter()
    handle = durably.register({"job": _make_async_job(calls)})["job"]
    run = handle.trigger({"a": 2, "b": 3})
    assert durably.process_one()
    done = durably.get_run(run.id)
    assert done is not None and done.status == "completed" and done.output == {"total": 5}
    assert calls == Counter({"sync": 1, "async": 1})
    assert [(s.name, s.output) for s in durably.get_steps(run.id)] == [
        ("sync-fn", 2),
        ("async-fn", 3),
    ]


def test_async_job_runs_in_the_background_worker(durably: Durably) -> None:
    calls: Counter[str] = Counter()
    handle = durably.register({"job": _make_async_job(calls)})["job"]
    durably.start()
    result = handle.trigger_and_wait({"a": 1, "b": 1}, timeout=20)
    assert result.output == Out(total=2)


def test_async_job_gets_an_async_step_context_and_the_validated_payload(
    durably: Durably,
) -> None:
    seen: list[Any] = []

    @define_job(name="async-ctx", input=Point)
    async def job(step: AsyncStepContext, payload: Point) -> None:
        seen.append((type(step), payload, step.run_id, step.step_index))

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({"x": "1", "y": 2})
    assert durably.process_one()
    [(ctx_type, payload, run_id, index)] = seen
    assert issubclass(ctx_type, AsyncStepContext)
    assert payload == Point(x=1, y=2) and run_id == run.id and index == 0


def test_async_job_replays_completed_steps_without_calling_them(durably: Durably) -> None:
    calls: Counter[str] = Counter()
    seen: list[Any] = []
    state: dict[str, bool] = {}

    @define_job(name="async-replay")
    async def job(step: AsyncStepContext, payload: Any) -> None:
        async def make_point() -> Point:
            calls["point"] += 1
            return Point(x=1, y=2)

        def make_tuple() -> Any:
            calls["tuple"] += 1
            return (1, 2)

        seen.append(await step.run("point", make_point))
        seen.append(await step.run("tuple", make_tuple))

        async def crash() -> None:
            if not state.get("crashed"):
                state["crashed"] = True
                raise SimulatedCrash

        await step.run("crash", crash)

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    with pytest.raises(SimulatedCrash):
        durably.process_one()
    assert durably.process_one()
    done = durably.get_run(run.id)
    assert done is not None and done.status == "completed"
    assert calls == Counter(point=1, tuple=1)
    # async return annotations restore the model; results pass through JSON both times
    assert seen == [Point(x=1, y=2), [1, 2], Point(x=1, y=2), [1, 2]]
    assert isinstance(seen[2], Point)


def test_async_step_that_raises_fails_the_run(durably: Durably) -> None:
    @define_job(name="async-fail")
    async def job(step: AsyncStepContext, payload: Any) -> None:
        async def boom() -> None:
            raise KeyError("missing")

        await step.run("boom", boom)

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    assert durably.process_one()
    failed = durably.get_run(run.id)
    assert failed is not None and failed.status == "failed"
    assert failed.error == "KeyError: 'missing'"
    assert failed.failed_step_name == "boom"


def test_process_one_async_runs_async_and_sync_jobs(durably: Durably) -> None:
    calls: Counter[str] = Counter()
    handles = durably.register({"async": _make_async_job(calls), "sync": sync_job})
    a = handles["async"].trigger({"a": 1, "b": 2})
    s = handles["sync"].trigger({"v": 7})

    async def main() -> tuple[bool, bool, bool]:
        return (
            await durably.process_one_async(),
            await durably.process_one_async(),
            await durably.process_one_async(),
        )

    assert asyncio.run(main()) == (True, True, False)
    assert durably.get_run(a.id).output == {"total": 3}  # type: ignore[union-attr]
    assert durably.get_run(s.id).output == 7  # type: ignore[union-attr]


def test_process_until_idle_async_counts_and_respects_max_runs(durably: Durably) -> None:
    handle = durably.register({"sync": sync_job})["sync"]
    handle.batch_trigger([{"v": i} for i in range(3)])

    async def main() -> tuple[int, int]:
        return (
            await durably.process_until_idle_async(max_runs=2),
            await durably.process_until_idle_async(),
        )

    assert asyncio.run(main()) == (2, 1)


def test_job_handle_async_twins(durably: Durably) -> None:
    handle = durably.register({"sync": sync_job})["sync"]
    durably.start()

    async def main() -> None:
        run = await handle.trigger_async({"v": 3}, idempotency_key="k", concurrency_key="c")
        assert run.status == "pending" and run.idempotency_key == "k"
        assert run.concurrency_key == "c"
        again = await handle.trigger_async({"v": 4}, idempotency_key="k")
        assert again.id == run.id

        batch = await handle.batch_trigger_async([{"v": 5}, BatchItem({"v": 6})])
        assert [r.payload["v"] for r in batch] == [5, 6]
        with pytest.raises(InputValidationError):
            await handle.batch_trigger_async([{"v": 1}, 42])

        result = await handle.trigger_and_wait_async({"v": 9}, timeout=20)
        assert result.output == 9
        with pytest.raises(RunFailedError) as info:
            await handle.trigger_and_wait_async({"fail": True}, timeout=20)
        assert info.value.error == "RuntimeError: sync failure"

        fetched = await handle.get_run_async(result.id)
        assert fetched is not None and fetched.output == 9
        runs = await handle.get_runs_async(status="failed")
        assert [r.id for r in runs] == [info.value.run_id]
        limited = await handle.get_runs_async(limit=1, offset=0)
        assert len(limited) == 1

    asyncio.run(main())


def test_trigger_and_wait_async_timeout_raises_wait_timeout_error(durably: Durably) -> None:
    handle = durably.register({"sync": sync_job})["sync"]

    async def main() -> None:
        with pytest.raises(WaitTimeoutError):
            await handle.trigger_and_wait_async({"v": 1}, timeout=0.1)

    asyncio.run(main())
    [run] = durably.get_runs()
    assert run.status == "pending"


def test_trigger_and_wait_async_does_not_block_the_event_loop(durably: Durably) -> None:
    released = threading.Event()

    @define_job(name="needs-the-loop")
    def job(step: Any, payload: Any) -> str:
        # only a coroutine on the test's loop can set this
        assert released.wait(10), "the event loop was blocked"
        return "ok"

    handle = durably.register({"job": job})["job"]
    durably.start()

    async def release_soon() -> None:
        await asyncio.sleep(0.05)
        released.set()

    async def main() -> Any:
        result, _ = await asyncio.gather(
            handle.trigger_and_wait_async({}, timeout=20), release_soon()
        )
        return result

    assert asyncio.run(main()).output == "ok"


def test_durably_async_twins(durably: Durably) -> None:
    durably.use(with_log_persistence())
    handle = durably.register({"sync": sync_job})["sync"]

    async def main() -> None:
        await durably.migrate_async()
        failed = handle.trigger({"fail": True})
        ok = handle.trigger({"v": 2})
        assert await durably.process_until_idle_async() == 2

        run = await durably.get_run_async(ok.id)
        assert run is not None and run.status == "completed"
        assert await durably.get_run_async("01ARZ3NDEKTSV4RRFFQ69G5FAV") is None
        runs = await durably.get_runs_async(job_name="sync-job", status=["completed", "failed"])
        assert [r.id for r in runs] == [ok.id, failed.id]
        assert [r.id for r in await durably.get_runs_async(limit=1, offset=1)] == [failed.id]
        steps = await durably.get_steps_async(ok.id)
        assert [s.name for s in steps] == ["one"]
        logs = await durably.get_logs_async(ok.id)
        assert [(e.message, e.data) for e in logs] == [("one done", {"value": 2})]

        events = Recorder(durably)
        await durably.retry_async(failed.id)
        assert (await durably.get_run_async(failed.id)).status == "pending"  # type: ignore[union-attr]
        await durably.cancel_async(failed.id)
        assert (await durably.get_run_async(failed.id)).status == "cancelled"  # type: ignore[union-attr]
        assert [e.type for e in events.events] == ["run:retry", "run:cancel"]
        await durably.delete_run_async(failed.id)
        assert await durably.get_run_async(failed.id) is None

        with pytest.raises(InvalidRunStateError):
            await durably.retry_async(ok.id)
        with pytest.raises(RunNotFoundError):
            await durably.cancel_async(failed.id)

    asyncio.run(main())


def test_start_and_stop_async_process_runs_in_the_background(durably: Durably) -> None:
    handle = durably.register({"sync": sync_job})["sync"]

    async def main() -> None:
        durably.start()
        run = await handle.trigger_async({"v": 1})
        await asyncio.to_thread(wait_for_status, durably, run.id, "completed")
        await durably.stop_async(timeout=5)

    asyncio.run(main())


def test_async_context_manager_closes_the_instance(db_url: str) -> None:
    async def main() -> Any:
        async with create_durably(db_url, polling_interval=0.05) as d:
            await d.migrate_async()
            handle = d.register({"sync": sync_job})["sync"]
            d.start()
            result = await handle.trigger_and_wait_async({"v": 5}, timeout=20)
            assert result.output == 5
        return d

    d = asyncio.run(main())
    with pytest.raises(Exception):  # noqa: B017 - closed: any error, but never success
        d.process_one()


def test_async_listener_registered_inside_a_loop_runs_on_that_loop(
    make_durably: Callable[..., Durably],
) -> None:
    d = make_durably()
    handle = d.register({"sync": sync_job})["sync"]

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        seen: list[Any] = []
        done = asyncio.Event()

        async def listener(event: Any) -> None:
            seen.append((event.type, asyncio.get_running_loop() is loop))
            if event.type == "run:complete":
                done.set()

        d.on("*", listener)
        await handle.trigger_async({"v": 1})
        assert await d.process_one_async()
        await asyncio.wait_for(done.wait(), 10)
        return seen

    seen = asyncio.run(main())
    assert ("run:complete", True) in seen
    assert all(on_loop for _, on_loop in seen)
