"""Backfill windows of an API source are windows the ingest_api handler actually loads."""

from __future__ import annotations

from datetime import date

from pipeline.handlers.ingest_api import plan_window
from playbook.backfill import function_output_key, plan_windows
from playbook.config import load_config


def test_each_api_window_is_the_window_the_handler_plans():
    config = load_config("examples/business_api.yaml")
    outputs = {"LandingBucketName": "unused", function_output_key("sales_api"): "fn"}
    windows = plan_windows(config, outputs, grain="quarter", sources=["sales_api"], api_start=date(2024, 1, 1))
    assert windows and windows[0].event["from"] == "2024-01-01"
    for w in windows:
        plan = plan_window(w.event, config.sources["sales_api"], None, config.company.timezone)
        assert plan.window[0].date().isoformat() == w.event["from"]
        assert w.bounds == (plan.window[0].isoformat(), plan.window[1].isoformat())  # what its batch records
    # each window ends where the next starts; the last one now, not at midnight (what changes later today is
    # the next scheduled run's: a cursor past it would skip it)
    assert all(a.bounds[1] == b.bounds[0] for a, b in zip(windows, windows[1:], strict=False))
    from datetime import UTC, datetime

    last = datetime.fromisoformat(windows[-1].bounds[1])
    assert datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) < last <= datetime.now(UTC)


def test_file_windows_are_sized_to_the_ingest_functions_timeout(monkeypatch):
    """A window is one invocation: at the ingest functions' 300 s it carries a third of what a 15-minute function
    may take (13 objects, 16 MiB), so the margin below the timeout is the same; one larger object goes alone."""
    from datetime import UTC, datetime

    from playbook import backfill
    from playbook.backfill import MAX_BYTES_PER_WINDOW, MAX_OBJECTS_PER_WINDOW, window_limits

    assert window_limits(900) == (MAX_OBJECTS_PER_WINDOW, MAX_BYTES_PER_WINDOW)
    assert window_limits(300) == (13, 16 * 1024 * 1024)
    assert window_limits(3600) == window_limits(900)
    config = load_config()
    prefix = config.sources["sales"].prefix
    landed = [{"Key": f"{prefix}sales-2024-01-{day:02d}.csv", "VersionId": f"v{day}", "Size": 1024,
               "LastModified": datetime(2024, 1, day, tzinfo=UTC)} for day in range(1, 31)]
    landed.append({"Key": f"{prefix}sales-2024-02-01.csv", "VersionId": "big", "Size": 20 * 1024 * 1024,
                   "LastModified": datetime(2024, 2, 1, tzinfo=UTC)})
    monkeypatch.setattr(backfill, "landed_versions", lambda s3, bucket, prefix: landed)
    outputs = {"LandingBucketName": "landing", function_output_key("sales"): "fn-sales"}
    quarter = plan_windows(config, outputs, grain="quarter", sources=["sales"])
    assert [w.objects for w in quarter] == [31], "for Lambda's whole 15 minutes: one window"
    sized = plan_windows(config, outputs, grain="quarter", sources=["sales"], timeouts={"fn-sales": 300})
    assert [w.objects for w in sized] == [13, 13, 4, 1] and sum(w.objects for w in sized) == 31
    assert all(w.bytes <= 16 * 1024 * 1024 for w in sized if w.objects > 1)


def test_one_api_sources_windows_never_run_at_once_and_go_in_date_order():
    """Each run of an API source reads and writes its cursor: two of its windows at once would fail one of them.
    Files and other sources still run beside them, up to the concurrency."""
    import threading
    import time

    from playbook.backfill import Window, _run_waiting, next_window

    def api(source: str, month: int) -> Window:
        bounds = (f"2024-{month:02d}-01T00:00:00+00:00", f"2024-{month + 1:02d}-01T00:00:00+00:00")
        return Window(source, f"fn-{source}", f"2024-{month:02d}", {"source": source, "from": f"2024-{month:02d}"},
                      bounds=bounds)

    windows = [api("invoices", m) for m in (3, 1, 2)] + [api("costs", m) for m in (2, 1)] + [
        Window("sales", "fn-sales", f"2024-0{m}", {"objects": [{"key": f"k{m}"}]}, objects=1) for m in (1, 2, 3)]
    running: dict[str, int] = {}
    seen, overlaps, widest = [], [], [0]
    guard = threading.Lock()

    class Target:
        runs_functions = "a stand-in for the runtime"

        def invoke(self, function, event, log_dir=None):
            from types import SimpleNamespace

            with guard:
                running[function] = running.get(function, 0) + 1
                if running[function] > 1 and not function.endswith("sales"):
                    overlaps.append(function)
                widest[0] = max(widest[0], sum(running.values()))
                seen.append((function, event))
            time.sleep(0.05)
            with guard:
                running[function] -= 1
            payload = {"batch": {"status": "committed"}, "committed": 1}  # the API's, and a file window's
            return SimpleNamespace(status="ok", payload=payload, duration_ms=50, log_path=None)

    _run_waiting(Target(), windows, 3, None, lambda w: None, 60, 1)
    assert not overlaps and widest[0] == 3
    assert all(w.status == "ok" and w.committed == 1 for w in windows)
    assert [e["from"] for f, e in seen if f == "fn-invoices"] == ["2024-01", "2024-02", "2024-03"]
    assert [e["from"] for f, e in seen if f == "fn-costs"] == ["2024-01", "2024-02"]
    # the asynchronous fan-out picks the same way: not a second window of a running source, the earliest first
    first = next_window(windows, [])
    assert (first.source, first.period) == ("invoices", "2024-01")
    second = next_window([w for w in windows if w is not first], [first])
    assert (second.source, second.period) == ("costs", "2024-01")
    third = next_window([w for w in windows if w not in (first, second)], [first, second])
    assert third.source == "sales"


def test_an_api_window_its_function_could_not_finish_is_invoked_again_until_complete():
    """A window whose function stopped for time (complete false, where to resume saved) is the same event
    again: the handler resumes it. One that never completes fails, saying so."""
    from types import SimpleNamespace

    from playbook.backfill import MAX_RESUMES, Window, _run_waiting

    def window() -> Window:
        return Window("invoices", "fn", "2024-01", {"source": "invoices", "from": "2024-01-01", "to": "2024-02-01"},
                      bounds=("2024-01-01T00:00:00+00:00", "2024-02-01T00:00:00+00:00"))

    class Target:
        runs_functions = "a stand-in for the runtime"

        def __init__(self, incomplete: int):
            self.incomplete, self.events = incomplete, []

        def invoke(self, function, event, log_dir=None):
            self.events.append(event)
            complete = len(self.events) > self.incomplete
            return SimpleNamespace(status="ok", duration_ms=10, log_path=None, payload={
                "complete": complete, "batch": {"status": "committed"}})

    finishing, w = Target(incomplete=2), window()
    _run_waiting(finishing, [w], 1, None, lambda w: None, 60, 1)
    assert len(finishing.events) == 3 and all(e == w.event for e in finishing.events)
    assert (w.status, w.committed) == ("ok", 1)
    endless, w = Target(incomplete=10_000), window()
    _run_waiting(endless, [w], 1, None, lambda w: None, 60, 1)
    assert len(endless.events) == MAX_RESUMES + 1 and w.status == "failed" and "still incomplete" in w.error
