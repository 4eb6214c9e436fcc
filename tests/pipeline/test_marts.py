"""The marts agree with core to the cent, refresh without blocking readers, and fail without losing data."""

from __future__ import annotations

import json
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
CURRENCY = "coalesce(currency, (select currency from meta.company))"
LIVE = "_deleted_by is null"
# a sale's attributes over its client's (core.sales s left join core.clients c)
SALE_ATTRIBUTES = "coalesce(c.attributes, '{}') || coalesce(s.attributes, '{}')"


def diversify(conn, deleting_batch: int) -> None:
    """What real data brings: a second currency (EUR) in sales, payments and costs; sales loaded before rows had
    a currency (null: the company's, GBP); regions and channels as sales attributes, a region and a tier as some
    clients' (a sale's own region wins); and rows of every table that
    a snapshot deleted at source (kept in core, in no mart)."""
    with conn.cursor() as cur:
        cur.execute("update core.sales set currency = 'EUR' where right(order_id, 1) in ('0', '5')")
        cur.execute("update core.sales set currency = null where right(order_id, 1) = '7'")
        cur.execute("update core.sales set attributes = jsonb_build_object('region', case when right(order_id, 1)"
                    " in ('1', '2', '3') then 'North' else 'South' end) where right(order_id, 1) between '1' and '6'")
        cur.execute("""update core.sales set attributes = attributes || '{"channel": "web"}' """
                    "where right(order_id, 1) = '2'")
        # the client's own attributes (a dimension's): a region the sale's own overrides, and one of its own
        cur.execute("""update core.clients set attributes = '{"region": "West", "tier": 2}' """
                    "where right(client_id, 1) in ('1', '3')")
        cur.execute("update core.payments set currency = 'EUR' where right(payment_id, 1) = '3'")
        cur.execute("update core.operating_costs set currency = 'EUR' where right(cost_id, 1) = '4'")
        cur.execute("update core.sales set _deleted_by = %s where right(order_id, 2) = '09'", (deleting_batch,))
        for table, key in (("payments", "payment_id"), ("operating_costs", "cost_id"),
                           ("interactions", "interaction_id")):
            cur.execute(f"update core.{table} set _deleted_by = %s where right({key}, 1) = '8'", (deleting_batch,))
        cur.execute("update core.tax set _deleted_by = %s where period = '2023-12-01' and tax_type like '%%VAT'",
                    (deleting_batch,))
    conn.commit()


@pytest.fixture(scope="module")
def loaded(stack):
    conn = psycopg2.connect(stack["database_url"])
    rows = synthetic_core.generate()
    synthetic_core.empty_warehouse(conn)
    batch_ids = synthetic_core.insert(conn, rows)
    diversify(conn, batch_ids[0])
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


def test_company_daily_equals_core_on_every_day_per_currency(loaded, db):
    expected: dict[tuple[date, str], dict[str, Decimal | int]] = defaultdict(lambda: defaultdict(int))
    for day, currency, amount, orders, lines, clients in fetch(
            db, f"select order_date, {CURRENCY}, sum(amount), count(distinct order_id), count(*), "
                f"count(distinct client_id) from core.sales where {LIVE} group by 1, 2"):
        expected[day, currency].update(sales_amount=amount, orders=orders, order_lines=lines, active_clients=clients)
    for table, column, day_expr, name, currency in (
            ("operating_costs", "amount", "cost_date", "operating_costs", CURRENCY),
            ("payments", "amount", "payment_date", "payments_received", CURRENCY),
            ("tax", "amount", "date_trunc('month', period)::date", "tax", "'GBP'"),
            ("interactions", "1", "(occurred_at at time zone 'Europe/London')::date", "interactions", "'GBP'")):
        for day, cur, total in fetch(db, f"select {day_expr}, {currency}, sum({column}) from core.{table} "
                                         f"where {LIVE} group by 1, 2"):
            expected[day, cur][name] = total
    mart = {r[:2]: r[2:] for r in fetch(
        db, "select day, currency, sales_amount, orders, order_lines, active_clients, operating_costs, "
            "payments_received, tax, interactions, net_cash from marts.company_daily order by day, currency")}
    days = sorted({d for d, _ in expected})
    first, last = days[0], days[-1]
    every_day = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    assert list(mart) == [(d, c) for d in every_day for c in ("EUR", "GBP")]  # every day, once per currency
    fields = ("sales_amount", "orders", "order_lines", "active_clients", "operating_costs", "payments_received",
              "tax", "interactions")
    for key, values in mart.items():
        want = tuple(expected.get(key, {}).get(f, 0) for f in fields)
        assert values[:-1] == want, key
        assert values[-1] == want[5] - want[4] - want[6], key
    assert mart[synthetic_core.LEAP_DAY, "GBP"][1] >= 3
    quiet = [mart[synthetic_core.QUIET[0] + timedelta(days=n), c] for n in range(7) for c in ("EUR", "GBP")]
    assert all(v == (0, 0, 0, 0, 0, 0, 0, 0, 0) for v in quiet)
    # tax is the company's, interactions are counted on its rows only; the other currency has money of its own
    assert all(v[6] == 0 and v[7] == 0 for (_, c), v in mart.items() if c == "EUR")
    assert sum(v[0] for (_, c), v in mart.items() if c == "EUR") != 0
    assert sum(v[4] for (_, c), v in mart.items() if c == "EUR") != 0
    assert sum(v[5] for (_, c), v in mart.items() if c == "EUR") != 0
    leap_tax = sum(r[2] for r in loaded["rows"]["tax"] if r[0] == synthetic_core.LEAP_DAY)
    assert mart[date(2024, 2, 1), "GBP"][6] == leap_tax


def test_currencies_are_never_added_together(loaded, db):
    """Each currency's totals in the marts are that currency's rows in core (a row without one is the company's),
    summed in Python from the rows as written; the marts never hold a total of two currencies."""
    rows = fetch(db, f"select {CURRENCY}, amount from core.sales where {LIVE}")
    by_currency: dict[str, Decimal] = defaultdict(Decimal)
    for currency, amount in rows:
        by_currency[currency] += amount
    assert set(by_currency) == {"GBP", "EUR"} and all(by_currency.values())
    for mart, column in (("company_daily", "sales_amount"), ("daily_activity", "sales_amount"),
                         ("yearly_sales", "sales_amount"), ("client_day_sales", "sales_amount")):
        assert dict(fetch(db, f"select currency, sum({column}) from marts.{mart} group by 1")) == by_currency, mart
    costs: dict[str, Decimal] = defaultdict(Decimal)
    for currency, amount in fetch(db, f"select {CURRENCY}, amount from core.operating_costs where {LIVE}"):
        costs[currency] += amount
    assert dict(fetch(db, "select currency, sum(amount) from marts.daily_costs_by_category group by 1")) == costs
    assert dict(fetch(db, "select currency, sum(operating_costs) from marts.company_daily group by 1")) == costs
    assert not fetch(db, "select 1 from marts.client_day_sales where currency is null")


def test_rows_deleted_at_source_are_in_no_mart(loaded, db):
    """Rows a snapshot deleted (kept in core with _deleted_by) are left out of every mart, in every table."""
    deleted = {t: fetch(db, f"select count(*), coalesce(sum({c}), 0) from core.{t} where _deleted_by is not null")[0]
               for t, c in (("sales", "amount"), ("payments", "amount"), ("operating_costs", "amount"),
                            ("tax", "amount"), ("interactions", "1"))}
    assert all(n > 0 and total != 0 for n, total in deleted.values()), deleted
    live = {t: fetch(db, f"select coalesce(sum({c}), 0) from core.{t} where {LIVE}")[0][0]
            for t, c in (("sales", "amount"), ("payments", "amount"), ("operating_costs", "amount"), ("tax", "amount"),
                         ("interactions", "1"))}
    ((sales, payments, costs, tax, interactions, lines),) = fetch(
        db, "select sum(sales_amount), sum(payments_received), sum(operating_costs), sum(tax), sum(interactions), "
            "sum(order_lines) from marts.company_daily")
    assert (sales, payments, costs, tax, interactions) == (live["sales"], live["payments"], live["operating_costs"],
                                                           live["tax"], live["interactions"])
    assert lines == fetch(db, f"select count(*) from core.sales where {LIVE}")[0][0]
    assert fetch(db, "select sum(order_lines) from marts.client_day_sales")[0][0] == lines
    assert fetch(db, "select sum(entries) from marts.daily_costs_by_category")[0][0] == \
        fetch(db, f"select count(*) from core.operating_costs where {LIVE}")[0][0]


def test_daily_activity_is_the_wide_table_headline(loaded, db):
    assert fetch(db, "select * from marts.daily_activity order by day, currency") == fetch(
        db, "select day, currency, sales_amount, orders, active_clients, operating_costs, payments_received, tax "
            "from marts.company_daily order by day, currency")


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
        core = {(y, c): (s, o) for y, c, s, o in fetch(
            db, f"select extract(year from order_date)::int, {CURRENCY}, sum(amount), count(distinct order_id) "
                f"from core.sales where {LIVE} group by 1, 2")}
        ((start, end),) = fetch(db, "select min(day), max(day) from marts.company_daily")
        mart = fetch(db, "select year, currency, sales_amount, orders, first_day, last_day, partial_year,"
                         " compared_amount, growth_abs, growth_pct from marts.yearly_sales order by 1, 2")
        years = sorted({r[0] for r in mart})
        assert [r[:2] for r in mart] == [(y, c) for y in years for c in ("EUR", "GBP")]  # every year, per currency
        assert years == list(range(min(y for y, _ in core), max(years) + 1)) and 2022 in years
        assert not [k for k in core if k[0] == 2022]
        for year, currency, amount, orders, first, last, partial, compared, growth_abs, growth_pct in mart:
            assert (amount, orders) == core.get((year, currency), (0, 0))
            assert (first, last) == (max(start, date(year, 1, 1)), min(end, date(year, 12, 31)))
            assert partial == ((first, last) != (date(year, 1, 1), date(year, 12, 31)))
            before = (year_before(first), year_before(last))
            if before[0] < start:
                assert (compared, growth_abs, growth_pct) == (None, None, None)
                continue
            ((then,),) = fetch(db, f"select coalesce(sum(amount), 0) from core.sales where order_date between %s"
                                   f" and %s and {CURRENCY} = %s and {LIVE}", (*before, currency))
            assert compared == then and growth_abs == amount - then
            assert growth_pct == (None if then == 0 else round(100 * (amount - then) / abs(then), 2))
        by_year = {r[:2]: r[2:] for r in mart}
        assert by_year[2022, "GBP"][5:] == (None, None, None)  # the data begins on 31 Dec 2021: no 2021 to compare
        assert by_year[2023, "GBP"][7] is None  # 2022 sold nothing
        # to March, against Jan-Mar 2023 in pounds; the euro sales of 2023 came later, so theirs is against 0
        assert by_year[2024, "GBP"][4] and by_year[2024, "GBP"][5] == Decimal("100.00")
        assert by_year[2024, "GBP"][7] is not None
        assert by_year[2024, "EUR"][5] == 0 and by_year[2024, "EUR"][7] is None
    finally:
        synthetic_core.remove(db, batch_ids)
        refresh_marts(db)


def test_client_day_sales_per_client_and_day(loaded, db):
    core = fetch(db, f"select s.order_date, s.client_id, c.name, coalesce(s.currency, 'GBP'), "
                     f"{SALE_ATTRIBUTES}, sum(s.amount), count(distinct s.order_id), count(*) "
                     f"from core.sales s left join core.clients c using (client_id) where s.{LIVE} "
                     f"group by 1, 2, 3, 4, 5 order by 1, 2, 4, 5")
    assert fetch(db, "select day, client_id, client_name, currency, attributes, sales_amount, orders, order_lines "
                     "from marts.client_day_sales order by day, client_id, currency, attributes") == core
    missing = [r for r in core if r[1] == "S9999"]
    assert missing and all(r[2] is None for r in missing)
    assert {json.dumps(r[4], sort_keys=True) for r in core} >= {
        "{}", '{"region": "North"}', '{"region": "South"}', '{"channel": "web", "region": "North"}',
        '{"region": "West", "tier": 2}', '{"region": "North", "tier": 2}'}
    assert {r[3] for r in core} == {"GBP", "EUR"}


def test_sales_attributes_lists_every_value_with_its_rows(loaded, db):
    assert fetch(db, "select attribute, value, value_text, rows from marts.sales_attributes") == fetch(
        db, f"select a.key, a.value, a.value #>> '{{}}', count(*) from core.sales s left join core.clients c "
            f"using (client_id) cross join lateral jsonb_each({SALE_ATTRIBUTES}) a where s.{LIVE} "
            f"group by 1, 2, 3 order by 1, 3")
    assert [r[:3] for r in fetch(db, "select * from marts.sales_attributes")] == [
        ("channel", "web", "web"), ("region", "North", "North"), ("region", "South", "South"),
        ("region", "West", "West"), ("tier", 2, "2")]


def test_daily_costs_by_category(loaded, db):
    assert fetch(db, "select day, category, currency, amount, entries from marts.daily_costs_by_category "
                     "order by 1, 2, 3") == \
        fetch(db, f"select cost_date, category, {CURRENCY}, sum(amount), count(*) from core.operating_costs "
                  f"where {LIVE} group by 1, 2, 3 order by 1, 2, 3")


def contains(attributes: dict, filters: dict) -> bool:
    return all(k in attributes and attributes[k] == v for k, v in filters.items())


@pytest.mark.parametrize(("p_from", "p_to", "n", "currency", "filters"), [
    (date(2024, 2, 1), date(2024, 2, 29), 10, None, None),
    (date(2023, 12, 1), date(2024, 2, 29), 5, None, None),
    (date(2024, 1, 1), date(2024, 1, 31), 100, None, None),
    (date(2024, 2, 29), date(2024, 2, 29), 3, None, None),
    (synthetic_core.TIE_DAY, synthetic_core.TIE_DAY, 1, None, None),
    (date(2023, 12, 1), date(2024, 2, 29), 10, "EUR", None),
    (date(2024, 1, 1), date(2024, 2, 29), 10, "GBP", {"region": "North"}),
    (date(2023, 11, 1), date(2024, 3, 15), 50, "eur", {"region": "South"}),
    (date(2023, 11, 1), date(2024, 3, 15), 50, None, {"region": "North", "channel": "web"}),
    (date(2024, 1, 1), date(2024, 2, 29), 10, None, {"region": "East"}),
    (date(2023, 11, 1), date(2024, 3, 15), 10, None, {"tier": 2}),
    (date(2023, 11, 1), date(2024, 3, 15), 10, None, {"region": "West"}),
])
def test_top_clients_equals_a_ranking_of_core_rows(loaded, db, p_from, p_to, n, currency, filters):
    """One currency's sales (the company's unless asked), the rows whose attributes hold every filter, ranked; the
    previous period is read with the same currency and filters. Computed here in Python from core's live rows."""
    length = (p_to - p_from).days + 1
    wanted = (currency or "GBP").upper()
    names = dict(fetch(db, "select client_id, name from core.clients"))
    rows = [r for r in fetch(db, f"select client_id, order_date, order_id, amount, coalesce(s.currency, 'GBP'), "
                                 f"{SALE_ATTRIBUTES} from core.sales s left join core.clients c using (client_id) "
                                 f"where s.{LIVE}")
            if r[4] == wanted and contains(r[5], filters or {})]
    period: dict[str, list] = {}
    before: dict[str, Decimal] = defaultdict(Decimal)
    for client, day, order, amount, _currency, _attributes in rows:
        if p_from <= day <= p_to:
            entry = period.setdefault(client, [Decimal(0), set()])
            entry[0] += amount
            entry[1].add(order)
        elif p_from - timedelta(days=length) <= day < p_from:
            before[client] += amount
    total = sum((a for a, _ in period.values()), Decimal(0))
    ranking = sorted(period, key=lambda c: (-period[c][0], c))[:n]
    expected = []
    for rank, client in enumerate(ranking, start=1):
        amount, orders = period[client]
        prev = before.get(client, Decimal(0))
        expected.append((rank, client, names.get(client), amount, round(100 * amount / total, 2) if total else None,
                         len(orders), prev, round(100 * (amount - prev) / abs(prev), 2) if prev else None, wanted))
    args = [p_from, p_to, n] + ([currency] if currency or filters else []) + ([json.dumps(filters)] if filters else [])
    got = fetch(db, f"select * from marts.top_clients({', '.join(['%s'] * len(args))})", args)
    assert got == expected
    assert len(got) == min(n, len(period))
    if filters == {"region": "East"}:
        assert got == []
    else:
        assert got
    if p_from == synthetic_core.TIE_DAY:  # a tie goes to the lower client_id
        assert [r[1] for r in got] == ["S0002"]


def test_top_clients_is_one_index_scan(loaded, db):
    with db.cursor() as cur:
        cur.execute("set local enable_seqscan = off")
        cur.execute("explain select * from marts.top_clients('2024-02-01', '2024-02-29')")
        plan = "\n".join(r[0] for r in cur.fetchall())
    db.rollback()
    assert "client_day_sales_day_client_currency_attributes" in plan


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
    before = fetch(db, "select * from marts.company_daily order by day, currency")
    yearly_before = fetch(db, "select * from marts.yearly_sales order by year, currency")
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
        assert fetch(db, "select * from marts.company_daily order by day, currency") == before
        assert fetch(db, "select * from marts.yearly_sales order by year, currency") == yearly_before
        assert fetch(db, "select sum(sales_amount) from marts.client_day_sales where client_id = 'S0001' "
                         "and day = '2024-03-01'")[0][0] is not None
        assert all(r["status"] == "ok" for r in refresh_marts(db))
        assert fetch(db, "select sum(sales_amount) from marts.company_daily")[0][0] == \
            fetch(db, f"select sum(amount) from core.sales where {LIVE}")[0][0]
    finally:
        synthetic_core.remove(db, added)
        refresh_marts(db)


class Budget:
    """A Lambda context with a fixed time left."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def get_remaining_time_in_millis(self) -> int:
        return int(self.seconds * 1000)


def test_a_refresh_behind_a_held_lock_gives_up_after_its_lock_timeout_and_says_why(loaded, db, stack,
                                                                                   landing_session):
    """A session holds core.tax, which marts.company_daily reads: the refresh function, 9 s left, waits for it no
    longer than its lock_timeout (a quarter of the 4 s its statements may take), records the reason in
    meta.mart_refreshes, refreshes what does not read it and skips what is built on it; a refresh already running
    makes the next one give up the same way, every mart recorded as skipped with the reason."""
    from pipeline.handlers import refresh_marts as handler

    holder = psycopg2.connect(stack["database_url"])
    try:
        with holder.cursor() as cur:
            cur.execute("lock table core.tax in access exclusive mode")  # as a migration or a TRUNCATE does
        with pytest.raises(MartRefreshError) as failure:
            handler.handler(None, Budget(9))
        status = {r["mart"]: r for r in failure.value.marts}
        blocked = status["company_daily"]
        assert blocked["status"] == "failed" and "lock timeout" in blocked["error"]
        assert "waited longer than lock_timeout (1s) for a lock another session holds" in blocked["error"]
        assert 0.9 <= blocked["seconds"] < 4
        assert status["yearly_sales"]["status"] == "skipped" and status["client_day_sales"]["status"] == "ok"
        holder.rollback()
        with holder.cursor() as cur:
            cur.execute("select pg_advisory_lock(7341003)")  # the lock marts.refresh runs under
        with pytest.raises(MartRefreshError) as failure:
            handler.handler(None, Budget(9))
        recorded = fetch(db, "select status, error from meta.mart_refreshes where run_id = %s",
                         (failure.value.run_id,))
        assert recorded and {r[0] for r in recorded} == {"skipped"}
        assert {r[1] for r in recorded} == {
            "not refreshed: another refresh of the marts held them longer than lock_timeout (1s)"}
    finally:
        holder.close()
    assert all(r["status"] == "ok" for r in refresh_marts(db))


def test_a_killed_functions_session_cancels_its_own_statement(landing_session):
    """A function killed mid-statement (its process gone, as Lambda kills one at its timeout) leaves no work
    running on the server: the session's statement_timeout, sized to the time the function had, ends it."""
    import os
    import signal
    import subprocess
    import sys

    from pipeline.db import session_timeouts

    assert session_timeouts(9) == {"statement_timeout": 4000, "lock_timeout": 4000,
                                   "idle_in_transaction_session_timeout": 4000}
    assert session_timeouts(9, lock_share=0.25)["lock_timeout"] == 1000  # the marts refresh's
    assert session_timeouts(2)["statement_timeout"] == 1000  # never below a second
    name = f"killed-{os.getpid()}"
    code = ("from pipeline.db import connect\n"
            f"conn = connect(application_name={name!r}, remaining=lambda: 7)\n"
            "conn.cursor().execute('select pg_sleep(60)')\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": "lambda_src"})
    watcher = psycopg2.connect(landing_session.database_url)
    watcher.autocommit = True

    def running() -> int:
        with watcher.cursor() as cur:
            cur.execute("select count(*) from pg_stat_activity where application_name = %s and state = 'active'",
                        (name,))
            return cur.fetchone()[0]

    try:
        deadline = time.monotonic() + 30
        while running() == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert running() == 1
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_at = time.monotonic()
        while running() and time.monotonic() < killed_at + 30:
            time.sleep(0.1)
        assert running() == 0 and time.monotonic() - killed_at < 10  # its 2 s statement_timeout, not pg_sleep's 60
    finally:
        proc.kill()
        watcher.close()


def test_the_refresh_command_prints_rows_and_seconds_per_mart(loaded, db, pipeline_stack, capsys):
    from playbook.cli import main

    assert main(["refresh"]) == 0
    lines = capsys.readouterr().out.splitlines()
    counts = {m: fetch(db, f"select count(*) from marts.{m}")[0][0] for m in MARTS}
    printed = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(printed) == set(MARTS)
    for mart, words in printed.items():
        assert words[1] == "ok" and int(words[2]) == counts[mart] and words[4].endswith("s")


def test_marts_are_the_same_whoever_refreshes_them_from_whichever_zone(loaded, stack):
    """An interaction's day is its date in the company's zone (meta.company), not the refreshing session's: a BI
    tool, the refresh function and a consultant's laptop in another zone refresh the same marts. The synthetic
    interactions are at 00:00 UTC, the day before in New York."""
    marts = {}
    for zone in ("UTC", "Asia/Kolkata", "America/New_York"):
        conn = psycopg2.connect(stack["database_url"], options=f"-c timezone={zone}")
        try:
            refresh_marts(conn)
            marts[zone] = fetch(conn, "select * from marts.company_daily order by day, currency")
            assert fetch(conn, "show timezone") == [(zone,)]
        finally:
            conn.close()
    assert marts["UTC"] == marts["Asia/Kolkata"] == marts["America/New_York"]
    assert sum(r[-2] for r in marts["UTC"]) > 0  # interactions were counted
