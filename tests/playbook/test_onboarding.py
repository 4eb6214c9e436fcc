"""The README's "Onboard your own company", run as written: its commands, parsed from the README, on generated
exports of a company that is not the demo, on a local stack of their own; the loaded money equals what pandas
reads from the files, and the reports are written."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import stack_env, state_dir
from tests.readme import bash_block

SECTION = "## Onboard your own company"


def exports(folder: Path) -> None:
    """Acme's order lines (ISO dates, a point) and weekly expenses (semicolons, day-first dates, decimal commas)."""
    rng = random.Random(7)
    lines = ["Order,Line,Date,Customer,Item,Qty,Price,Total"]
    day, order = dt.date(2024, 1, 2), 0
    while day <= dt.date(2024, 3, 29):
        for _ in range(rng.randint(0, 4)):
            order += 1
            for line in range(1, rng.randint(1, 3) + 1):
                qty, cents = rng.randint(1, 9), rng.randint(150, 4000)
                lines.append(f"A{order:05d},{line},{day.isoformat()},C{rng.randint(1, 25):03d},Tea {rng.randint(1, 9)},"
                             f"{qty},{cents // 100}.{cents % 100:02d},{qty * cents // 100}.{qty * cents % 100:02d}")
        day += dt.timedelta(days=1)
    (folder / "orders.csv").write_text("\n".join(lines) + "\n")
    costs = ["Expense ID;Date;Category;Supplier;Amount"]
    day, n = dt.date(2024, 1, 1), 0
    while day <= dt.date(2024, 3, 29):
        for category in ("Rent", "Utilities", "Software"):
            n += 1
            cents = rng.randint(1000, 250000)
            costs.append(f"E{n:04d};{day:%d/%m/%Y};{category};Vendor {category};"
                         f"{cents // 100:,}".replace(",", ".") + f",{cents % 100:02d}")
        day += dt.timedelta(days=7)
    (folder / "expenses.csv").write_text("\n".join(costs) + "\n")


@pytest.mark.stack
@pytest.mark.timeout(900)
def test_the_readme_walkthrough_onboards_a_company_from_an_empty_configuration(tmp_path):
    work = tmp_path / "acme"
    (work / "exports").mkdir(parents=True)
    exports(work / "exports")
    script = bash_block(SECTION).replace(".venv/bin/", f"{Path(sys.executable).parent}/")
    state = state_dir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLAYBOOK_", "AWS_", "PG"))}
    env.update(stack_env(state), PLAYBOOK_REPORTS_DIR=str(work / "reports"))
    try:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        assert "nothing was committed" in done.stderr
        loaded = subprocess.run(
            [sys.executable, "-c", "import json, psycopg2; from playbook.database import database_url; "
             "c = psycopg2.connect(database_url()).cursor(); out = {}\n"
             "for t in ('sales', 'operating_costs'):\n"
             "    c.execute(f'select count(*), sum(amount)::text from core.{t}'); out[t] = c.fetchone()\n"
             "c.execute(\"select count(*) from meta.batches where status = 'committed'\")\n"
             "out['batches'] = c.fetchone()\n"
             "print(json.dumps(out))"],
            cwd=work, env={**env, "PLAYBOOK_CONFIG": str(work / "acme.yaml")}, capture_output=True, text=True,
            timeout=120)
        assert loaded.returncode == 0, loaded.stderr
        got = json.loads(loaded.stdout)
        orders = pd.read_csv(work / "exports" / "orders.csv", dtype=str)
        costs = pd.read_csv(work / "exports" / "expenses.csv", sep=";", dtype=str)
        order_total = sum((Decimal(v) for v in orders["Total"]), Decimal(0))
        cost_total = sum((Decimal(v.replace(".", "").replace(",", ".")) for v in costs["Amount"]), Decimal(0))
        assert (got["sales"][0], Decimal(got["sales"][1])) == (len(orders), order_total)
        assert (got["operating_costs"][0], Decimal(got["operating_costs"][1])) == (len(costs), cost_total)
        assert got["batches"] == [2]  # the dry run left no ledger row
        latest = work / "reports" / "latest"
        for name in ("activity.png", "yearly_sales.png", "dashboard.html", "expense_email.eml"):
            assert (latest / name).stat().st_size > 0, name
    finally:
        subprocess.run([sys.executable, "-m", "playbook", "local", "down", "--delete-data"], env=env,
                       capture_output=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)
