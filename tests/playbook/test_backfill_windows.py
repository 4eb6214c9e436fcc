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
        assert (plan.window[0].date().isoformat(), plan.window[1].date().isoformat()) == (w.event["from"],
                                                                                           w.event["to"])
        assert w.bounds == (plan.window[0].isoformat(), plan.window[1].isoformat())  # what its batch records


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
