"""The marts agree with core to the cent, refresh without blocking readers, and fail without losing data."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from datetime import date, timedelta
from decimal import Decimal

import psycopg2
import pytest

from pipeline.marts import MartRefreshError, refresh_marts
from tests.pipeline import synthetic_core

pytestmark = pytest.mark.stack

MARTS = ("company_daily", "daily_activity", "yearly_sales", "client_day_sales", "daily_costs_by_category")


@pytest.fixture(scope="module")
def loaded(stack):
    conn = psycopg2.connect(stack["database_url"])
    rows = synthetic_core.generate()
    synthetic_core.empty_warehouse(conn)
    batch_ids = synthetic_core.insert(conn, rows)
    refreshed = refresh_marts(conn)
    try:
        yield {"rows": rows, "batch_ids": batch_ids, "refresh": refreshed, "conn": conn}
    finally:
        synthetic_core.remove(conn, batch_ids)
        refresh_marts(conn)
        conn.close()


def fetch(conn, query: str, params=()) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(query, params)
        result = cur.fetchall()
    conn.commit()
    return result


def test_marts_are_exact_numeric_with_unique_indexes(loaded, db):
    rows = fetch(db, "select c.relname, a.attname, format_type(a.atttypid, a.atttypmod) "
                     "from pg_attribute a join pg_class c on c.oid = a.attrelid "
                     "join pg_namespace n on n.oid = c.relnamespace "
                     "where n.nspname = 'marts' and c.relkind = 'm' and a.attnum > 0 and not a.attisdropped")
    types = {(r[0], r[1]): r[2] for r in rows}
    assert {m for m, _ in types} == set(MARTS)
    assert not [k for k, t in types.items() if t in ("double precision", "real", "money")]
    for column in ("sales_amount", "operating_costs", "payments_received", "tax", "net_cash"):
        assert types[("company_daily", column)] == "numeric"
    assert types[("yearly_sales", "year")] == "integer"
    unique = fetch(db, "select c.relname from pg_index i join pg_class c on c.oid = i.indrelid "
                       "join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'marts' and i.indisunique")
    assert {r[0] for r in unique} == set(MARTS)


def test_the_first_refresh_recorded_every_mart_in_dependency_order(loaded):
    refreshed = loaded["refresh"]
    order = [r["mart"] for r in refreshed]
    assert sorted(order) == sorted(MARTS)
    assert order.index("company_daily") < order.index("daily_activity")
    assert order.index("company_daily") < order.index("yearly_sales")
    assert all(r["status"] == "ok" and r["concurrent"] and r["seconds"] >= 0 for r in refreshed)


def test_company_daily_equals_core_on_every_day(loaded, db):
    expected: dict[date, dict[str, Decimal | int]] = defaultdict(lambda: defaultdict(int))
    for day, amount, orders, lines, clients in fetch(
            db, "select order_date, sum(amount), count(distinct order_id), count(*), count(distinct client_id) "
                "from core.sales group by 1"):
        expected[day].update(sales_amount=amount, orders=orders, order_lines=lines, active_clients=clients)
    for table, column, day_expr, name in (
            ("operating_costs", "amount", "cost_date", "operating_costs"),
            ("payments", "amount", "payment_date", "payments_received"),
            ("tax", "amount", "date_trunc('month', period)::date", "tax"),
            ("interactions", "1", "occurred_at::date", "interactions")):
        for day, total in fetch(db, f"select {day_expr}, sum({column}) from core.{table} group by 1"):
            expected[day][name] = total
    mart = {r[0]: r[1:] for r in fetch(
        db, "select day, sales_amount, orders, order_lines, active_clients, operating_costs, payments_received, "
            "tax, interactions, net_cash from marts.company_daily order by day")}
    first, last = min(expected), max(expected)
    assert list(mart) == [first + timedelta(days=n) for n in range((last - first).days + 1)]  # every day, once
    fields = ("sales_amount", "orders", "order_lines", "active_clients", "operating_costs", "payments_received",
              "tax", "interactions")
    for day, values in mart.items():
        want = tuple(expected.get(day, {}).get(f, 0) for f in fields)
        assert values[:-1] == want, day
        assert values[-1] == want[5] - want[4] - want[6], day
    assert synthetic_core.LEAP_DAY in mart and mart[synthetic_core.LEAP_DAY][1] >= 3
    quiet = [mart[synthetic_core.QUIET[0] + timedelta(days=n)] for n in range(7)]
    assert all(v == (0, 0, 0, 0, 0, 0, 0, 0, 0) for v in quiet)
    assert mart[date(2024, 2, 1)][6] == sum(r[2] for r in loaded["rows"]["tax"] if r[0] == synthetic_core.LEAP_DAY)
    # the synthetic rows' own totals, summed in Python, reach the mart unchanged
    rows = loaded["rows"]
    assert sum(v[0] for v in mart.values()) == sum((r[7] for r in rows["sales"]), Decimal(0))
    assert sum(v[4] for v in mart.values()) == sum((r[4] for r in rows["operating_costs"]), Decimal(0))
    assert sum(v[5] for v in mart.values()) == sum((r[5] for r in rows["payments"]), Decimal(0))
    assert sum(v[6] for v in mart.values()) == sum((r[2] for r in rows["tax"]), Decimal(0))
    assert sum(v[7] for v in mart.values()) == len(rows["interactions"])


def test_daily_activity_is_the_wide_table_headline(loaded, db):
    assert fetch(db, "select * from marts.daily_activity order by day") == fetch(
        db, "select day, sales_amount, orders, active_clients, operating_costs, payments_received, tax "
            "from marts.company_daily order by day")


def year_before(day: date) -> date:
    return date(day.year - 1, 2, 28) if (day.month, day.day) == (2, 29) else day.replace(year=day.year - 1)


def test_yearly_sales_and_growth_on_the_same_dates_a_year_earlier(loaded, db):
    """Each year's sales and orders come from core; its growth compares the days the data covers with the
    same dates one year earlier, computed here from core.sales, and there is none when the data does not
    reach back that far. Sales early in 2023 give the year to date (2024, to March) a figure to compare."""
    early = {"sales": [("GO1", 1, date(2023, 1, 2), "S0001", "tea", 1, Decimal("40.00"), Decimal("40.00"), "GBP"),
                       ("GO2", 1, date(2023, 3, 1), "S0002", "jam", 2, Decimal("30.00"), Decimal("60.00"), "GBP"),
                       ("GO3", 1, date(2023, 6, 1), "S0002", "jam", 1, Decimal("99.00"), Decimal("99.00"), "GBP")]}
    batch_ids = synthetic_core.insert(db, early, tag="G")
    try:
        refresh_marts(db)
        core = dict((y, (s, o)) for y, s, o in fetch(
            db, "select extract(year from order_date)::int, sum(amount), count(distinct order_id) from core.sales "
                "group by 1"))
        ((start, end),) = fetch(db, "select min(day), max(day) from marts.company_daily")
        mart = fetch(db, "select year, sales_amount, orders, first_day, last_day, partial_year, compared_amount,"
                         " growth_abs, growth_pct from marts.yearly_sales order by 1")
        years = [r[0] for r in mart]
        assert years == list(range(min(core), max(years) + 1)) and 2022 in years and 2022 not in core
        for year, amount, orders, first, last, partial, compared, growth_abs, growth_pct in mart:
            assert (amount, orders) == core.get(year, (0, 0))
            assert (first, last) == (max(start, date(year, 1, 1)), min(end, date(year, 12, 31)))
            assert partial == ((first, last) != (date(year, 1, 1), date(year, 12, 31)))
            before = (year_before(first), year_before(last))
            if before[0] < start:
                assert (compared, growth_abs, growth_pct) == (None, None, None)
                continue
            ((then,),) = fetch(db, "select coalesce(sum(amount), 0) from core.sales where order_date between %s"
                                   " and %s", before)
            assert compared == then and growth_abs == amount - then
            assert growth_pct == (None if then == 0 else round(100 * (amount - then) / abs(then), 2))
        by_year = {r[0]: r for r in mart}
        assert by_year[2022][6:] == (None, None, None)  # the data begins on 31 Dec 2021: no 2021 to compare
        assert by_year[2023][8] is None  # 2022 sold nothing
        assert by_year[2024][5] and by_year[2024][6] == Decimal("100.00")  # to March, against Jan-Mar 2023
        assert by_year[2024][8] is not None
    finally:
        synthetic_core.remove(db, batch_ids)
        refresh_marts(db)


def test_client_day_sales_per_client_and_day(loaded, db):
    core = fetch(db, "select s.order_date, s.client_id, c.name, sum(s.amount), count(distinct s.order_id), count(*) "
                     "from core.sales s left join core.clients c using (client_id) group by 1, 2, 3 order by 1, 2")
    assert fetch(db, "select day, client_id, client_name, sales_amount, orders, order_lines "
                     "from marts.client_day_sales order by day, client_id") == core
    missing = [r for r in core if r[1] == "S9999"]
    assert missing and all(r[2] is None for r in missing)


def test_daily_costs_by_category(loaded, db):
    assert fetch(db, "select day, category, amount, entries from marts.daily_costs_by_category order by 1, 2") == \
        fetch(db, "select cost_date, category, sum(amount), count(*) from core.operating_costs group by 1, 2 "
                  "order by 1, 2")


@pytest.mark.parametrize(("p_from", "p_to", "n"), [
    (date(2024, 2, 1), date(2024, 2, 29), 10),
    (date(2023, 12, 1), date(2024, 2, 29), 5),
    (date(2024, 1, 1), date(2024, 1, 31), 100),
    (date(2024, 2, 29), date(2024, 2, 29), 3),
    (synthetic_core.TIE_DAY, synthetic_core.TIE_DAY, 1),
])
def test_top_clients_equals_a_group_by_over_core(loaded, db, p_from, p_to, n):
    length = (p_to - p_from).days + 1
    period = {c: (a, o, name) for c, a, o, name in fetch(
        db, "select s.client_id, sum(s.amount), count(distinct s.order_id), max(c.name) from core.sales s "
            "left join core.clients c using (client_id) where s.order_date between %s and %s group by 1",
        (p_from, p_to))}
    before = dict(fetch(db, "select client_id, sum(amount) from core.sales where order_date between %s and %s "
                            "group by 1", (p_from - timedelta(days=length), p_from - timedelta(days=1))))
    total = sum((a for a, _, _ in period.values()), Decimal(0))
    ranking = sorted(period, key=lambda c: (-period[c][0], c))[:n]
    expected = []
    for rank, client in enumerate(ranking, start=1):
        amount, orders, name = period[client]
        prev = before.get(client, Decimal(0))
        expected.append((rank, client, name, amount, round(100 * amount / total, 2) if total else None, orders, prev,
                         round(100 * (amount - prev) / abs(prev), 2) if prev else None))
    got = fetch(db, "select * from marts.top_clients(%s, %s, %s)", (p_from, p_to, n))
    assert got == expected
    assert len(got) == min(n, len(period)) > 0
    if p_from == synthetic_core.TIE_DAY:  # a tie goes to the lower client_id
        assert [r[1] for r in got] == ["S0002"]


def test_top_clients_is_one_index_scan(loaded, db):
    with db.cursor() as cur:
        cur.execute("set local enable_seqscan = off")
        cur.execute("explain select * from marts.top_clients('2024-02-01', '2024-02-29')")
        plan = "\n".join(r[0] for r in cur.fetchall())
    db.rollback()
    assert "client_day_sales_day_client" in plan


def test_data_freshness_names_the_last_committed_batch(loaded, db):
    fresh = {r[0]: r[1:] for r in fetch(db, "select source, last_batch_id, last_loaded_at, rows_loaded "
                                            "from marts.data_freshness")}
    batches = dict(zip(synthetic_core._COLUMNS, loaded["batch_ids"], strict=True))
    for table, batch_id in batches.items():
        last_batch_id, loaded_at, rows_loaded = fresh[f"synthetic_{table}"]
        assert (last_batch_id, rows_loaded) == (batch_id, len(loaded["rows"][table])) and loaded_at is not None


def _sales_total(conn) -> tuple:
    with conn.cursor() as cur:
        cur.execute("select count(*), sum(sales_amount) from marts.company_daily")
        return cur.fetchone()


def _add_sales(conn, tag: str, amount: str) -> list[int]:
    rows = {"sales": [(f"{tag}O1", 1, date(2024, 3, 1), "S0001", "tea", 1, Decimal(amount), Decimal(amount), "GBP")]}
    return synthetic_core.insert(conn, rows, tag=tag)


def test_a_refresh_does_not_block_readers_and_readers_keep_their_snapshot(loaded, stack, db):
    url = stack["database_url"]
    snapshot = psycopg2.connect(url)
    snapshot.set_session(isolation_level="REPEATABLE READ")
    slow = psycopg2.connect(url)
    added = []
    try:
        before = _sales_total(snapshot)  # the snapshot transaction stays open from here
        added += _add_sales(db, "R1", "0.0007")
        times: dict[str, float] = {}
        slow_result: list[tuple] = []

        def read_slowly():
            with slow.cursor() as cur:
                cur.execute("select pg_backend_pid()")
                times["pid"] = cur.fetchone()[0]
                times["read_start"] = time.monotonic()
                # ~3 s: the sleep runs for every row while the scan holds its lock and snapshot
                cur.execute("select count(*), sum(sales_amount) from "
                            "(select *, pg_sleep(0.004) from marts.company_daily offset 0) t")
                slow_result.append(cur.fetchone())
                times["read_end"] = time.monotonic()
            slow.commit()

        reader = threading.Thread(target=read_slowly)
        reader.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if "pid" in times and fetch(db, "select 1 from pg_stat_activity where pid = %s and state = 'active'",
                                        (times["pid"],)):
                break
            time.sleep(0.02)
        refreshed = refresh_marts(db)
        times["refresh_end"] = time.monotonic()
        reader.join(30)
        assert all(r["status"] == "ok" for r in refreshed)
        assert times["refresh_end"] < times["read_end"], "the refresh waited for the reader"
        assert slow_result == [before]                    # the reader's statement saw the old snapshot whole
        assert _sales_total(snapshot) == before            # so does the open repeatable-read transaction
        snapshot.commit()
        after = _sales_total(snapshot)
        assert after == (before[0], before[1] + Decimal("0.0007"))
        snapshot.commit()

        # and a refresh in progress (its lock held, not yet committed) does not block a reader either
        added += _add_sales(db, "R2", "-0.0003")
        refresher = psycopg2.connect(url)
        try:
            with refresher.cursor() as cur:
                cur.execute("refresh materialized view concurrently marts.company_daily")
            with snapshot.cursor() as cur:
                cur.execute("set statement_timeout = '2s'")
                cur.execute("select mode from pg_locks where relation = 'marts.company_daily'::regclass "
                            "and granted and mode = 'ExclusiveLock'")
                assert cur.fetchall() == [("ExclusiveLock",)]
            assert _sales_total(snapshot) == after
            snapshot.commit()
            refresher.commit()
            assert _sales_total(snapshot) == (after[0], after[1] - Decimal("0.0003"))
            snapshot.commit()
        finally:
            refresher.close()
    finally:
        snapshot.close()
        slow.close()
        synthetic_core.remove(db, added)
        refresh_marts(db)


def test_a_failing_refresh_keeps_the_previous_snapshot_records_the_error_and_raises(loaded, db):
    before = fetch(db, "select * from marts.company_daily order by day")
    yearly_before = fetch(db, "select * from marts.yearly_sales order by year")
    added = _add_sales(db, "F1", "123.4567")
    with db.cursor() as cur:  # the owner refreshes; without read access to core.tax the wide table cannot build
        cur.execute("revoke select on core.tax from playbook_owner")
    db.commit()
    try:
        with pytest.raises(MartRefreshError) as failure:
            refresh_marts(db)
    finally:
        with db.cursor() as cur:
            cur.execute("grant select on core.tax to playbook_owner")
        db.commit()
    try:
        error = failure.value
        status = {r["mart"]: r for r in error.marts}
        assert "company_daily" in str(error) and "permission denied for table tax" in str(error)
        assert status["company_daily"]["status"] == "failed"
        assert "permission denied for table tax" in status["company_daily"]["error"]
        assert status["daily_activity"]["status"] == "skipped" and status["yearly_sales"]["status"] == "skipped"
        assert status["client_day_sales"]["status"] == "ok" and status["daily_costs_by_category"]["status"] == "ok"
        recorded = fetch(db, "select mart, status, error is not null, finished_at is not null from meta.mart_refreshes "
                             "where run_id = %s order by position", (error.run_id,))
        assert {r[0]: r[1] for r in recorded} == {m: r["status"] for m, r in status.items()}
        assert all(r[3] for r in recorded)
        # the failed marts are still readable, as they were; the independent ones moved on
        assert fetch(db, "select * from marts.company_daily order by day") == before
        assert fetch(db, "select * from marts.yearly_sales order by year") == yearly_before
        assert fetch(db, "select sum(sales_amount) from marts.client_day_sales where client_id = 'S0001' "
                         "and day = '2024-03-01'")[0][0] is not None
        assert all(r["status"] == "ok" for r in refresh_marts(db))
        assert fetch(db, "select sum(sales_amount) from marts.company_daily")[0][0] == \
            fetch(db, "select sum(amount) from core.sales")[0][0]
    finally:
        synthetic_core.remove(db, added)
        refresh_marts(db)


def test_the_refresh_command_prints_rows_and_seconds_per_mart(loaded, db, pipeline_stack, capsys):
    from playbook.cli import main

    assert main(["refresh"]) == 0
    lines = capsys.readouterr().out.splitlines()
    counts = {m: fetch(db, f"select count(*) from marts.{m}")[0][0] for m in MARTS}
    printed = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(printed) == set(MARTS)
    for mart, words in printed.items():
        assert words[1] == "ok" and int(words[2]) == counts[mart] and words[4].endswith("s")
