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
