"""`marts_match_core` keeps currencies apart and leaves out rows deleted at source: the real marts over sales and
costs in two currencies, with rows a snapshot deleted, pass; a mart that adds the two currencies together, or one
that keeps a deleted row, fails, and its findings name the day, currency and amounts that differ.

A faulty mart is built in the test's own transaction, in the real one's place (the real one renamed aside), and
rolled back after: compare_marts reads it as it reads the real one.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from psycopg2.extras import Json

from pipeline.marts import refresh_marts
from playbook.accuracy import marts
from tests.pipeline.conftest import TRUNCATE
from tests.playbook.test_accuracy_failures import LIMITS, add_batch, add_row, one

pytestmark = pytest.mark.stack


def two_currencies_state(cur) -> int:
    """Client C1 buys in pounds and in euros on 5 January, with a region; a third line, and a cost, were deleted
    at source by a later snapshot (kept in core, _deleted_by set). Costs in pounds (named and not) and euros."""
    clients = add_batch(cur, "clients", "landing/clients/2024-01-01.csv", rows_read=1, rows_inserted=1)
    add_row(cur, "clients", clients, 2, client_id="C1", name="Client One")
    sales = add_batch(cur, "sales", "landing/sales/2024-01-06.csv", rows_read=3, rows_inserted=3,
                      amount_in=Decimal("37.00"), amount_loaded=Decimal("37.00"))
    snapshot = add_batch(cur, "sales", "landing/sales/2024-01-07.csv")
    for row, (order, currency, amount, deleted) in enumerate([("SO-1", "GBP", "10.00", None),
                                                              ("SO-2", "EUR", "20.00", None),
                                                              ("SO-3", "GBP", "7.00", snapshot["batch_id"])], start=2):
        add_row(cur, "sales", sales, row, order_id=order, line_no=1, order_date="2024-01-05", client_id="C1",
                quantity=1, unit_price=Decimal(amount), amount=Decimal(amount), currency=currency,
                attributes=Json({"region": "North"}), _deleted_by=deleted)
    costs = add_batch(cur, "operating_costs", "landing/costs/2024-01-06.csv", rows_read=4, rows_inserted=4)
    for row, (cost, currency, amount, deleted) in enumerate([("K-1", None, "3.00", None),
                                                             ("K-2", "GBP", "4.00", None),
                                                             ("K-3", "EUR", "5.00", None),
                                                             ("K-4", "GBP", "6.00", snapshot["batch_id"])], start=2):
        add_row(cur, "operating_costs", costs, row, cost_id=cost, cost_date="2024-01-05", category="rent",
                amount=Decimal(amount), currency=currency, _deleted_by=deleted)
    return snapshot["batch_id"]


def in_place_of(cur, mart: str, query: str, key: str) -> None:
    """A faulty `marts.<mart>` in this transaction: the real one renamed aside, `query` in its place."""
    cur.execute(f"alter materialized view marts.{mart} rename to {mart}_real")
    cur.execute(f"alter index marts.{key} rename to {key}_real")
    cur.execute(f"create materialized view marts.{mart} as {query}")


@pytest.fixture()
def refreshed(db):
    """The owner's cursor on an emptied warehouse holding the state above, its marts refreshed."""
    with db.cursor() as c:
        c.execute(TRUNCATE)
        two_currencies_state(c)
        db.commit()
        refresh_marts(db)
        try:
            yield c
        finally:
            db.rollback()


def test_the_real_marts_keep_currencies_apart_and_leave_deleted_rows_out(refreshed):
    results = marts.compare_marts(refreshed, LIMITS, [])
    failing = [(r.subject, r.findings) for r in results if r.status != "pass"]
    assert failing == []
    refreshed.execute("select currency, sales_amount, order_lines from marts.company_daily where day = '2024-01-05'"
                      " order by 1")
    assert refreshed.fetchall() == [("EUR", Decimal("20.00"), 1), ("GBP", Decimal("10.00"), 1)]


def test_a_mart_that_adds_two_currencies_fails(refreshed):
    """company_daily and client_day_sales rebuilt to sum every currency under the company's: the day's pound row
    holds 30.00 where core has 10.00, and the euro row is missing (None) where core has 20.00."""
    in_place_of(refreshed, "company_daily",
                "select day, 'GBP'::text as currency, sum(sales_amount) as sales_amount, sum(orders) as orders,"
                " sum(order_lines) as order_lines, sum(active_clients) as active_clients,"
                " sum(operating_costs) as operating_costs, sum(payments_received) as payments_received,"
                " sum(tax) as tax, sum(interactions) as interactions, sum(net_cash) as net_cash"
                " from marts.company_daily_real group by day", "company_daily_day_currency")
    in_place_of(refreshed, "client_day_sales",
                "select day, client_id, max(client_name) as client_name, 'GBP'::text as currency, attributes,"
                " sum(sales_amount) as sales_amount, sum(orders) as orders, sum(order_lines) as order_lines"
                " from marts.client_day_sales_real group by day, client_id, attributes",
                "client_day_sales_day_client_currency_attributes")
    results = marts.compare_marts(refreshed, LIMITS, [])
    daily = one(results, "marts_match_core", "marts.company_daily")
    assert (daily.status, daily.observed) == ("fail", 2)
    assert daily.findings == [
        {"day": "2024-01-05", "currency": "EUR", "sales_amount": {"mart": None, "core": Decimal("20.00")},
         "orders": {"mart": None, "core": 1}, "order_lines": {"mart": None, "core": 1},
         "active_clients": {"mart": None, "core": 1}, "operating_costs": {"mart": None, "core": Decimal("5.00")},
         "net_cash": {"mart": None, "core": Decimal("-5.00")}},
        {"day": "2024-01-05", "sales_amount": {"mart": Decimal("30.00"), "core": Decimal("10.00")},
         "orders": {"mart": 2, "core": 1}, "order_lines": {"mart": 2, "core": 1},
         "active_clients": {"mart": 2, "core": 1},
         "operating_costs": {"mart": Decimal("12.00"), "core": Decimal("7.00")},
         "net_cash": {"mart": Decimal("-12.00"), "core": Decimal("-7.00")}},
    ]
    assert "amounts in GBP unless a finding names its currency" in daily.summary
    client = one(results, "marts_match_core", "marts.client_day_sales")
    assert (client.status, client.observed) == ("fail", 2)
    assert [(f.get("currency"), f["attributes"], f["sales_amount"]) for f in client.findings] == [
        ("EUR", '{"region": "North"}', {"mart": None, "core": Decimal("20.00")}),
        (None, '{"region": "North"}', {"mart": Decimal("30.00"), "core": Decimal("10.00")})]
    per_client = one(results, "marts_match_core", "marts.client_day_sales per client")
    assert (per_client.status, per_client.observed) == ("fail", 2)
    assert one(results, "marts_match_core", "marts.daily_costs_by_category").status == "pass"


def test_a_mart_that_keeps_a_deleted_row_fails(refreshed):
    """daily_costs_by_category and client_day_sales rebuilt from core without leaving out the rows the snapshot
    deleted: each differs from core by the deleted row, in its own currency."""
    in_place_of(refreshed, "daily_costs_by_category",
                "select cost_date as day, category, coalesce(currency, 'GBP') as currency, sum(amount) as amount,"
                " count(*) as entries from core.operating_costs group by 1, 2, 3",
                "daily_costs_by_category_day_category_currency")
    in_place_of(refreshed, "client_day_sales",
                "select order_date as day, client_id, null::text as client_name, currency,"
                " coalesce(attributes, '{}') as attributes, sum(amount) as sales_amount,"
                " count(distinct order_id) as orders, count(*) as order_lines from core.sales group by 1, 2, 4, 5",
                "client_day_sales_day_client_currency_attributes")
    results = marts.compare_marts(refreshed, LIMITS, [])
    costs = one(results, "marts_match_core", "marts.daily_costs_by_category")
    assert (costs.status, costs.observed) == ("fail", 1)
    assert costs.findings == [{"day": "2024-01-05", "category": "rent",
                               "amount": {"mart": Decimal("13.00"), "core": Decimal("7.00")},
                               "entries": {"mart": 3, "core": 2}}]
    client = one(results, "marts_match_core", "marts.client_day_sales")
    assert (client.status, client.observed) == ("fail", 1)
    assert client.findings == [{"day": "2024-01-05", "client_id": "C1", "attributes": '{"region": "North"}',
                                "sales_amount": {"mart": Decimal("17.00"), "core": Decimal("10.00")},
                                "orders": {"mart": 2, "core": 1}, "order_lines": {"mart": 2, "core": 1}}]
    assert one(results, "marts_match_core", "marts.company_daily").status == "pass"
