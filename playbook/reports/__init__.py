"""The reports the company reads, all from the marts through the reporting role: the business-activity and
yearly-sales charts, the sales team's dashboard and the operations team's email (see `email`)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.periods import Period
from playbook.settings import reports_root


def connect_reporting(database_url_reporting: str):
    """A read-only connection as the reporting role (which can read marts and nothing else)."""
    import psycopg2

    conn = psycopg2.connect(database_url_reporting, connect_timeout=10, application_name="playbook-reports")
    conn.set_session(readonly=True, autocommit=True)
    return conn


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def new_run_dir(root: Path | None = None, run_id: str | None = None) -> Path:
    """reports/runs/<run id>/ (a UTC timestamp unless given), with reports/latest pointing at it.

    The root is $PLAYBOOK_REPORTS_DIR or reports/; an existing run folder is reused (a rerun of a stage)."""
    root = root or reports_root()
    run_id = run_id or new_run_id()
    run_dir = root / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    latest = root / "latest"
    tmp = root / f".latest-{run_id}"
    tmp.symlink_to(Path("runs") / run_id, target_is_directory=True)
    os.replace(tmp, latest)  # atomic: readers see the old run or the new one, never none
    return run_dir


def build_reports(out_dir: Path | str, config: PipelineConfig, database_url_reporting: str,
                  activity_period: Period | None = None) -> dict[str, Path]:
    """forecast.json, activity.png/.svg (with the forecast), yearly_sales.png/.svg and dashboard.html in out_dir;
    returns {name: path}. The forecast scores the latest earlier one among out_dir's sibling run folders."""
    from playbook.reports.activity import activity_chart
    from playbook.reports.dashboard import dashboard
    from playbook.reports.forecast import FORECAST_JSON, write_forecast
    from playbook.reports.yearly_sales import yearly_sales_chart

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    conn = connect_reporting(database_url_reporting)
    try:
        forecast = write_forecast(conn, config, out)
        written: dict[str, Path] = {"forecast_json": out / FORECAST_JSON}
        written.update(activity_chart(conn, config, out, activity_period, forecast))
        written.update(yearly_sales_chart(conn, config, out))
        written.update(dashboard(conn, config, out))
    finally:
        conn.close()
    return written
