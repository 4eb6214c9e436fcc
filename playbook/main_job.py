"""The main job: everything a new user sees from one command on the local default."""

from __future__ import annotations

import time

from playbook.config import load_config
from playbook.database import migrate
from playbook.local.stack import activate, current, redact
from playbook.settings import PROJECT_ROOT


def run_demo() -> int:
    started = time.monotonic()
    status = current().up()
    activate()
    print(f"local stack: AWS {status['aws_endpoint_url']}, database {redact(status['database_url'])}")
    config = load_config()
    print(f"company: {config.company.name} ({len(config.sources)} sources)")
    applied = migrate(status["database_url"])
    print(f"migrations: {', '.join(applied) if applied else 'up to date'}")
    reports = PROJECT_ROOT / "reports"
    print(f"done in {time.monotonic() - started:.1f}s; output under {reports}")
    return 0
