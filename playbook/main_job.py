"""The main job: everything a new user sees from one command on the local default.

The local stack comes up, then the chain runs the five notebooks on the demo company (provision, deploy,
backfill with the demo's history delivered first, validate, reports) into one run folder under reports/.
"""

from __future__ import annotations

import time

from playbook.local.stack import current, redact
from playbook.settings import reports_root

DEMO_YEARS = 3
DEMO_CLIENTS = 300


def run_demo(years: int = DEMO_YEARS, clients: int = DEMO_CLIENTS, defects: str | None = None) -> int:
    from playbook.chain import ChainFailed, run_chain

    started = time.monotonic()
    status = current().up()
    print(f"local stack: AWS {status['aws_endpoint_url']}, database {redact(status['database_url'])}")
    parameters = {"demo": True, "demo_years": years, "demo_clients": clients, "demo_defects": defects}
    try:
        result = run_chain("local", parameters)
    except ChainFailed as exc:
        print(f"playbook: {exc}")
        return 1
    latest = reports_root() / "latest"
    print(f"done in {time.monotonic() - started:.1f}s; run {result.run_id}")
    print(f"  notebooks and manifest : {latest}/ (manifest.json, 00_provision.ipynb ... 40_reports.ipynb)")
    print(f"  reports                : {latest}/activity.png, yearly_sales.png, dashboard.html, expense_email.eml,"
          " forecast.json, cost.md")
    return 0
