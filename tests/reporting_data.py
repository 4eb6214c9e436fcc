"""A small synthetic company in core (with its meta.batches rows), refreshed into the marts, for the report
tests; and the reporting role's login. Every row carries a `T-` id so it can be removed afterwards.

Its currency is the company's (GBP); every seventh order and every ninth cost are in euros (EUR), and most
sales carry a `region` attribute (North or South, by client), so the reports' currency and filter paths run."""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal

import psycopg2
import psycopg2.extras

from pipeline.model import KEY_SEPARATOR

FIRST_DAY = date(2023, 1, 1)
LAST_DAY = date(2024, 5, 20)  # mid-month, mid-quarter: every preset means something
CATEGORIES = ("Rent", "Utilities", "Software", "Travel", "Marketing", "Packaging")
SOURCE_PREFIX = "test_reports_"
TABLES = ("sales", "clients", "operating_costs", "payments", "tax", "interactions")
SECOND_CURRENCY = "EUR"


def sale_currency(order_id: str) -> str:
    number = int(order_id.removeprefix("T-O"))
    return SECOND_CURRENCY if number < 900000 and number % 7 == 0 else "GBP"


def sale_attributes(order_id: str, client_id: str) -> str | None:
    """{"region": ...} by client, for all but every fifth order (which carries none)."""
    if int(order_id.removeprefix("T-O")) % 5 == 0:
        return None
    return json.dumps({"region": "North" if int(client_id[-3:]) % 2 else "South"})


def cost_currency(cost_id: str) -> str | None:
    """Every ninth cost in euros; the others name none (the company's)."""
    return SECOND_CURRENCY if int(cost_id.removeprefix("T-X")) % 9 == 0 else None


def _batch(cur, source: str, table: str, rows: int) -> int:
    cur.execute(
        "insert into meta.batches (source, source_kind, target_table, source_ref, status, rows_read,"
        " rows_inserted, finished_at) values (%s, 's3_csv', %s, %s, 'committed', %s, %s, now()) returning batch_id",
        (source, table, f"s3://landing/test/{table}.csv", rows, rows),
    )
    return cur.fetchone()[0]


def _meta(batch_id: int, source: str, i: int, *values, key: int = 1) -> tuple:
    """A row's lineage: its batch, place, content hash and _key (its first `key` values, as the loader joins
    them)."""
    digest = hashlib.sha256(repr(values).encode()).hexdigest()
    return (batch_id, i, digest, KEY_SEPARATOR.join(str(v) for v in values[:key]))


def insert_company(conn) -> dict:
    """Insert the company and refresh the marts; returns what was made (ids, days)."""
    rng = random.Random(20240520)
    clients = [(f"T-C{i:03d}", f"Client {name}") for i, name in enumerate(
        ["Alder", "Birch", "Cedar", "Damson", "Elm", "Fir", "Ginkgo", "Hazel", "Ilex", "Juniper", "Kauri",
         "Larch", "Maple", "Nutmeg"], start=1)]
    sales, costs, payments = [], [], []
    day = FIRST_DAY
    order = 0
    while day <= LAST_DAY:
        for client_id, _name in clients[:12]:
            weight = int(client_id[-2:])
            if rng.random() < 0.18 + 0.02 * weight:
                order += 1
                for line in range(1, rng.randint(1, 3) + 1):
                    qty = rng.randint(1, 20)
                    price = Decimal(rng.randint(150, 9000)) / 100
                    sales.append((f"T-O{order:06d}", line, day, client_id, f"P{rng.randint(1, 40)}", qty, price,
                                  price * qty))
        if rng.random() < 0.6:
            for _ in range(rng.randint(1, 3)):
                costs.append((f"T-X{len(costs) + 1:06d}", day, rng.choice(CATEGORIES), "Supplier",
                              Decimal(rng.randint(500, 250000)) / 100))
        if rng.random() < 0.3:
            payments.append((f"T-P{len(payments) + 1:06d}", day, rng.choice(clients)[0],
                             Decimal(rng.randint(1000, 500000)) / 100))
        day += timedelta(days=1)
    # a tie in this month's top list (same amount, decided by client_id), a client that is new this month,
    # and a client with sales but no master record (no name)
    for n, client_id in enumerate(("T-C013", "T-C014")):
        sales.append((f"T-O9{n:05d}", 1, date(2024, 5, 3), client_id, "P1", 1, Decimal("8765.43"),
                      Decimal("8765.43")))
    sales.append(("T-O990001", 1, date(2024, 5, 7), "T-C099", "P2", 3, Decimal("1000.10"), Decimal("3000.30")))
    # an amount finer than pence (the page must add it exactly and round it for display like the database)
    sales.append(("T-O990002", 1, date(2024, 5, 10), "T-C012", "P3", 1, Decimal("1234.565"), Decimal("1234.565")))

    with conn, conn.cursor() as cur:
        ids = {t: _batch(cur, f"{SOURCE_PREFIX}{t}", t, 0) for t in TABLES}
        for i, (client_id, name) in enumerate(clients):
            cur.execute("insert into core.clients (client_id, name, segment, country, created_on,"
                        " _batch_id, _source_row, _row_hash, _key) values"
                        " (%s, %s, 'SME', 'GB', %s, %s, %s, %s, %s)",
                        (client_id, name, FIRST_DAY, *_meta(ids["clients"], "clients", i, client_id, name)))
        psycopg2.extras.execute_values(
            cur, "insert into core.sales (order_id, line_no, order_date, client_id, product, quantity, unit_price,"
            " amount, currency, attributes, _batch_id, _source_row, _row_hash, _key) values %s",
            [(*s, sale_currency(s[0]), sale_attributes(s[0], s[3]), *_meta(ids["sales"], "sales", i, *s, key=2))
             for i, s in enumerate(sales)])
        psycopg2.extras.execute_values(
            cur, "insert into core.operating_costs (cost_id, cost_date, category, vendor, amount, currency,"
            " _batch_id, _source_row, _row_hash, _key) values %s",
            [(*c, cost_currency(c[0]), *_meta(ids["operating_costs"], "operating_costs", i, *c))
             for i, c in enumerate(costs)])
        psycopg2.extras.execute_values(
            cur, "insert into core.payments (payment_id, payment_date, client_id, amount,"
            " _batch_id, _source_row, _row_hash, _key) values %s",
            [(*p, *_meta(ids["payments"], "payments", i, *p)) for i, p in enumerate(payments)])
        cur.execute("insert into core.tax (period, tax_type, amount, _batch_id, _source_row,"
                    " _row_hash, _key) values ('2024-03-01', 'T-VAT', 12345.67, %s, 1, 'h',"
                    " '2024-03-01' || chr(31) || 'T-VAT')", (ids["tax"],))
        cur.execute("insert into core.interactions (interaction_id, occurred_at, client_id, channel,"
                    " _batch_id, _source_row, _row_hash, _key) values"
                    " ('T-I1', '2024-05-02 10:00+00', 'T-C001', 'email', %s, 1, 'h', 'T-I1')",
                    (ids["interactions"],))
        counts = {"sales": len(sales), "clients": len(clients), "operating_costs": len(costs),
                  "payments": len(payments), "tax": 1, "interactions": 1}
        for table, batch_id in ids.items():
            cur.execute("update meta.batches set rows_read = %s, rows_inserted = %s where batch_id = %s",
                        (counts[table], counts[table], batch_id))
    refresh(conn)
    return {"batches": ids, "first_day": FIRST_DAY, "last_day": LAST_DAY, "rows": counts}


# -- a company as real data came: long, in dollars, sources ending on different days, fine amounts -------------
HISTORY_FIRST_DAY = date(2002, 1, 7)
HISTORY_LAST_SALE = date(2024, 5, 20)
HISTORY_LAST_COST = date(2024, 7, 29)  # a Monday: the costs go on after the last sale
HISTORY_WINDOW_SALES = Decimal(733947)  # the activity window's sales, exactly
FINE_FROM = date(2024, 4, 1)  # from here on, every amount has 16 decimal places


def insert_history(conn, window_days: int) -> dict:
    """A company in US dollars (meta.company's currency is set to USD until removed) with 22 years of weekly
    sales (HISTORY_FIRST_DAY to HISTORY_LAST_SALE) and operating costs that go on to HISTORY_LAST_COST. Amounts
    from FINE_FROM on have 16 decimal places, and the last `window_days` days of sales add up to exactly
    HISTORY_WINDOW_SALES dollars (a balancing order on the last day)."""
    rng = random.Random(2002)
    clients = [(f"T-H{i:02d}", f"Client {name}") for i, name in enumerate(
        ["Aspen", "Beech", "Cherry", "Dogwood", "Eucalyptus"], start=1)]
    window_start = HISTORY_LAST_SALE - timedelta(days=window_days - 1)
    sales, costs = [], []
    day = HISTORY_FIRST_DAY
    while day <= HISTORY_LAST_SALE:
        for client_id, _name in clients:
            if day >= FINE_FROM:
                amount = Decimal(rng.randint(10 ** 18, 2 * 10 ** 19)).scaleb(-16)  # 100 to 2,000, 16 places
            else:
                amount = Decimal(rng.randint(10000, 200000)).scaleb(-2)
            sales.append((f"T-O{len(sales) + 1:07d}", 1, day, client_id, "P1", 1, amount, amount))
        day += timedelta(days=7)
    in_window = sum((s[7] for s in sales if s[2] >= window_start), Decimal(0))
    balance = HISTORY_WINDOW_SALES - in_window
    assert balance > 0, "the window's sales already exceed the total it must show"
    sales.append(("T-O9999999", 1, HISTORY_LAST_SALE, clients[0][0], "P2", 1, balance, balance))
    day = HISTORY_FIRST_DAY
    while day <= HISTORY_LAST_COST:
        costs.append((f"T-X{len(costs) + 1:06d}", day, rng.choice(CATEGORIES), "Supplier",
                      Decimal(rng.randint(500, 250000)) / 100))
        day += timedelta(days=7)
    with conn, conn.cursor() as cur:
        cur.execute("select currency from meta.company")
        (currency_before,) = cur.fetchone()
        cur.execute("update meta.company set currency = 'USD'")
        ids = {t: _batch(cur, f"{SOURCE_PREFIX}{t}", t, 0) for t in ("sales", "clients", "operating_costs")}
        for i, (client_id, name) in enumerate(clients):
            cur.execute("insert into core.clients (client_id, name, segment, country, created_on,"
                        " _batch_id, _source_row, _row_hash, _key) values"
                        " (%s, %s, 'SME', 'US', %s, %s, %s, %s, %s)",
                        (client_id, name, HISTORY_FIRST_DAY, *_meta(ids["clients"], "clients", i, client_id, name)))
        psycopg2.extras.execute_values(
            cur, "insert into core.sales (order_id, line_no, order_date, client_id, product, quantity, unit_price,"
            " amount, currency, _batch_id, _source_row, _row_hash, _key) values %s",
            [(*row, "USD", *_meta(ids["sales"], "sales", i, *row, key=2)) for i, row in enumerate(sales)])
        psycopg2.extras.execute_values(
            cur, "insert into core.operating_costs (cost_id, cost_date, category, vendor, amount, currency,"
            " _batch_id, _source_row, _row_hash, _key) values %s",
            [(*c, "USD", *_meta(ids["operating_costs"], "operating_costs", i, *c)) for i, c in enumerate(costs)])
        counts = {"sales": len(sales), "clients": len(clients), "operating_costs": len(costs)}
        for table, batch_id in ids.items():
            cur.execute("update meta.batches set rows_read = %s, rows_inserted = %s where batch_id = %s",
                        (counts[table], counts[table], batch_id))
    refresh(conn)
    return {"batches": ids, "rows": counts, "currency_before": currency_before, "window_start": window_start}


@contextlib.contextmanager
def history_company(database_url: str, window_days: int) -> Iterator[dict]:
    """The long-history dollar company in core and the marts for the duration of a test module, removed after
    (and the company's currency put back)."""
    conn = psycopg2.connect(database_url)
    made = insert_history(conn, window_days)
    try:
        yield made
    finally:
        remove_company(conn, made)
        conn.close()


def remove_company(conn, made: dict) -> None:
    batch_ids = list(made["batches"].values())
    with conn, conn.cursor() as cur:
        for table in TABLES:
            cur.execute(f"delete from core.{table} where _batch_id = any(%s)", (batch_ids,))
        cur.execute("delete from meta.batches where batch_id = any(%s)", (batch_ids,))
        if made.get("currency_before"):
            cur.execute("update meta.company set currency = %s", (made["currency_before"],))
    refresh(conn)


def refresh(conn) -> None:
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("call marts.refresh()")
    finally:
        conn.autocommit = False


def reporting_url(owner_url: str) -> str:
    """The reporting role's login, made the way the playbook makes it (a password kept in Secrets Manager)."""
    from playbook.warehouse import REPORTING_ROLE, ensure_role_logins

    return ensure_role_logins(owner_url)[REPORTING_ROLE]


@contextlib.contextmanager
def synthetic_company(database_url: str) -> Iterator[dict]:
    """The synthetic company in core and the marts for the duration of a test module, removed after."""
    conn = psycopg2.connect(database_url)
    made = insert_company(conn)
    try:
        yield made
    finally:
        remove_company(conn, made)
        conn.close()
