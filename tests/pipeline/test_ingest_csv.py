"""CSV exports: what real files do to a loader, and what this one does back."""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import io
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from zoneinfo import ZoneInfo

import pandas as pd
import psycopg2
import pytest

from pipeline.handlers import ingest_object
from pipeline.money import EXACT
from pipeline.sources import LoadError

HEADER = "Order No,Line,Order Date,Client Code,Product,Qty,Unit Price,Line Total,Currency\n"


def sales(*lines: str) -> bytes:
    return (HEADER + "".join(line + "\n" for line in lines)).encode()


def ledger(landing, batch_id: int) -> dict:
    cols = ("rows_read", "rows_inserted", "rows_updated", "rows_unchanged", "rows_duplicate", "rows_quarantined",
            "rows_skipped", "amount_in", "amount_loaded", "amount_quarantined", "amount_duplicate", "status")
    row = landing.query(f"select {', '.join(cols)} from meta.batches where batch_id = %s", (batch_id,))[0]
    return dict(zip(cols, row, strict=True))


def reconciles(entry: dict) -> bool:
    parts = ("rows_inserted", "rows_updated", "rows_unchanged", "rows_duplicate", "rows_quarantined")
    with decimal.localcontext(EXACT):  # every digit: a ledger that rounds must not pass
        return entry["rows_read"] == sum(entry[p] for p in parts) and entry["amount_in"] == (
            entry["amount_loaded"] + entry["amount_quarantined"] + entry["amount_duplicate"])


def test_clean_file_loads_with_lineage_and_a_reconciling_ledger(landing):
    result = landing.ingest("landing/sales/2024/a.csv", sales(
        "SO-1,1,2024-01-05,00042,Widget,2,10.50,21.00,GBP",
        "SO-1,2,2024-01-05,00042,Gadget,1,0.10,0.10,GBP",
        "SO-2,1,2024-01-06,00043,Widget,3,0.20,0.60,GBP"))
    assert result["status"] == "committed" and result["rows_inserted"] == 3
    entry = ledger(landing, result["batch_id"])
    assert reconciles(entry) and entry["amount_loaded"] == Decimal("21.70")
    rows = landing.query("select client_id, amount, _source, _source_ref, _source_row, _batch_id, length(_row_hash) "
                         "from core.sales_lineage order by order_id, line_no")
    assert rows[0][:5] == ("00042", Decimal("21.00"), "sales", f"s3://{landing.bucket}/landing/sales/2024/a.csv"
                           + f"?versionId={rows[0][3].split('versionId=')[1]}", 2)
    assert {r[5] for r in rows} == {result["batch_id"]} and {r[6] for r in rows} == {32}
    assert landing.query("select sum(amount) from core.sales")[0][0] == Decimal("21.70")


def test_same_object_twice_loads_once_and_a_changed_object_merges_with_history(landing):
    key = "landing/sales/2024/b.csv"
    first = landing.ingest(key, sales("SO-1,1,2024-01-05,00042,Widget,2,10.50,21.00,GBP",
                                      "SO-2,1,2024-01-05,00043,Widget,1,10.50,10.50,GBP"))
    again = landing.ingest(key)
    assert again == {"status": "already_loaded", "batch_id": first["batch_id"], "source": "sales",
                     "ref": again["ref"]}
    changed = landing.ingest(key, sales("SO-1,1,2024-01-05,00042,Widget,2,10.50,21.00,GBP",
                                        "SO-2,1,2024-01-05,00043,Widget,2,10.50,21.00,GBP",
                                        "SO-3,1,2024-01-06,00044,Widget,1,10.5,10.5,GBP"))
    assert (changed["rows_inserted"], changed["rows_updated"], changed["rows_unchanged"]) == (1, 1, 1)
    history = landing.query("select order_id, amount, _batch_id from core.sales_history")
    assert history == [("SO-2", Decimal("10.50"), first["batch_id"])]
    # the same rows with money written differently ('10.5' vs '10.50') are not a change
    same = landing.ingest("landing/sales/2024/b-copy.csv", sales(
        "SO-1,1,2024-01-05,00042,Widget,2,10.5,21,GBP", "SO-2,1,2024-01-05,00043,Widget,2,10.50,21.00,GBP",
        "SO-3,1,2024-01-06,00044,Widget,1,10.50,10.50,GBP"))
    assert (same["rows_inserted"], same["rows_updated"], same["rows_unchanged"]) == (0, 0, 3)


def test_bad_values_are_quarantined_with_readable_reasons(landing):
    positive = changed_source(landing.config, "sales", amounts="positive")  # the demo's sales are signed (returns)
    result = landing.ingest("landing/sales/2024/c.csv", config=positive, body=sales(
        "SO-1,1,2024-01-05,00042,Widget,2,10.50,21.00,GBP",
        'SO-2,1,2024-01-05,00043,Widget,1,10.50,"12,3O",GBP',
        "SO-3,1,2025-02-30,00043,Widget,1,10.50,10.50,GBP",
        "SO-4,1,,00043,Widget,1,10.50,10.50,GBP",
        "SO-5,x,2024-01-05,00043,Widget,1,10.50,-10.50,GBP",
        "SO-1,1,2024-01-05,00042,Widget,2,10.50,21.00,GBP",
        "TOTAL,,,,,,,42.00,"))
    entry = ledger(landing, result["batch_id"])
    assert (entry["rows_read"], entry["rows_inserted"], entry["rows_duplicate"], entry["rows_quarantined"],
            entry["rows_skipped"]) == (6, 1, 1, 4, 1)
    assert reconciles(entry)
    reasons = dict(landing.query("select source_row, reason from meta.quarantine order by source_row"))
    assert reasons == {
        3: "row 3: amount '12,3O' is not a number",
        4: "row 4: order_date '2025-02-30' is not a valid date",
        5: "row 5: order_date is empty",
        6: "row 6: line_no 'x' is not a whole number; amount '-10.50' is negative",
    }
    raw = landing.query("select raw from meta.quarantine where source_row = 3")[0][0]
    assert raw["Line Total"] == "12,3O" and raw["Client Code"] == "00043"


def test_a_key_repeated_with_other_values_keeps_the_later_row_and_quarantines_the_earlier(landing):
    result = landing.ingest("landing/sales/2024/d.csv", sales(
        "SO-1,1,2024-01-05,00042,Widget,2,10.50,21.00,GBP",
        "SO-1,1,2024-01-05,00042,Widget,3,10.50,31.50,GBP"))
    assert (result["rows_inserted"], result["rows_quarantined"]) == (1, 1)
    assert landing.query("select quantity from core.sales") == [(3,)]
    assert landing.query("select reason from meta.quarantine")[0][0] == (
        "row 2: order_id=SO-1, line_no=1 appears again at row 3 with different values; the later row is loaded")
    assert reconciles(ledger(landing, result["batch_id"]))
    # into the empty table the rows went straight in until the key build found the repeat: its plan says so
    assert landing.query("select plan->>'into' from meta.batches where batch_id = %s", (result["batch_id"],)) == [
        ("merged after all: a key repeats in the delivery, so its rows were staged and the repeats collapsed",)]


def test_repeats_are_found_whether_or_not_the_table_already_holds_their_keys(landing):
    """Into an empty table the primary key finds a repeat; into a loaded one a search before the merge does,
    for keys already there (updated by the later row) and for new ones alike."""
    landing.ingest("landing/sales/2024/d0.csv", sales("SO-1,1,2024-01-05,00042,Widget,2,10.50,21.00,GBP"))
    result = landing.ingest("landing/sales/2024/d1.csv", sales(
        "SO-1,1,2024-01-05,00042,Widget,4,10.50,42.00,GBP",
        "SO-1,1,2024-01-05,00042,Widget,5,10.50,52.50,GBP",
        "SO-2,1,2024-01-05,00043,Widget,1,10.50,10.50,GBP",
        "SO-2,1,2024-01-05,00043,Widget,1,10.50,10.50,GBP"))
    assert (result["rows_inserted"], result["rows_updated"], result["rows_duplicate"],
            result["rows_quarantined"]) == (1, 1, 1, 1)
    assert landing.query("select order_id, quantity from core.sales order by 1") == [("SO-1", 5), ("SO-2", 1)]
    assert reconciles(ledger(landing, result["batch_id"]))


PRIMARY_KEY = "select conname, pg_get_constraintdef(oid) from pg_constraint where conrelid = 'core.sales'::regclass " \
              "and contype = 'p'"


def test_a_first_load_builds_the_primary_key_after_its_rows_and_puts_back_the_same_key(landing):
    assert landing.query(PRIMARY_KEY) == [("sales_pkey", "PRIMARY KEY (_key)")]
    first = landing.ingest("landing/sales/2024/k0.csv", sales(  # the key build finds the repeat, then collapse
        "SO-1,1,2024-01-05,00042,Widget,2,10.50,21.00,GBP",
        "SO-1,1,2024-01-05,00042,Widget,3,10.50,31.50,GBP",
        "SO-2,1,2024-01-05,00043,Widget,1,10.50,10.50,GBP"))
    assert (first["rows_inserted"], first["rows_quarantined"]) == (2, 1)
    assert landing.query(PRIMARY_KEY) == [("sales_pkey", "PRIMARY KEY (_key)")]
    assert landing.query("select count(*) from meta.deferred_keys") == [(0,)]
    with pytest.raises(psycopg2.errors.UniqueViolation):  # and it still refuses a repeat
        landing.query("insert into core.sales select * from core.sales limit 1")


def test_a_reader_in_the_empty_table_sends_the_first_load_through_the_index(landing):
    """The key is only taken off a table held exclusively: with a reader in it, the load does not wait for
    the reader to finish (a few seconds at most), it inserts through the primary key as usual."""
    reader = psycopg2.connect(landing.database_url)
    reader.set_session(isolation_level="REPEATABLE READ")
    try:
        with reader.cursor() as cur:
            cur.execute("select count(*) from core.sales")  # holds its lock until the transaction ends
            result = landing.ingest("landing/sales/2024/k1.csv", sales(
                "SO-1,1,2024-01-05,00042,Widget,2,10.50,21.00,GBP"))
            assert result["status"] == "committed" and result["rows_inserted"] == 1
            cur.execute("select count(*) from core.sales")  # its snapshot: still empty
            assert cur.fetchone() == (0,)
    finally:
        reader.close()
    assert landing.query("select order_id from core.sales") == [("SO-1",)]
    assert landing.query(PRIMARY_KEY) == [("sales_pkey", "PRIMARY KEY (_key)")]


@contextlib.contextmanager
def waiting_for_its_turn(landing, key: str):
    """A load of `key` in a thread, waiting for the merge turn into core.sales, which this holds: yields a
    cursor in the transaction that holds it, and the load's future. Ending that transaction lets it go on."""
    turn = psycopg2.connect(landing.database_url)  # plays the batch whose turn it is
    try:
        with turn.cursor() as cur, ThreadPoolExecutor(1) as pool:
            cur.execute("select pg_advisory_xact_lock(hashtextextended('merge into core.sales', 0))")
            waiting = pool.submit(landing.ingest, key)
            deadline = time.monotonic() + 30
            while not landing.query("select exists (select from pg_locks where locktype = 'advisory'"
                                    " and not granted)")[0][0]:
                assert time.monotonic() < deadline and not waiting.done(), "the load never waited for its turn"
                time.sleep(0.05)
            yield cur, waiting
    finally:
        turn.close()


def test_a_first_load_waiting_for_its_turn_holds_nothing_on_the_table(landing):
    """Two first loads into one empty table take turns. The one waiting must hold no lock on the table, or
    the one whose turn it is could never take the table for its key build: they would deadlock."""
    landing.put("landing/sales/2024/t1.csv", sales("SO-1,1,2024-01-05,00042,Widget,2,10.50,21.00,GBP"))
    with waiting_for_its_turn(landing, "landing/sales/2024/t1.csv") as (cur, waiting):
        cur.execute("set local lock_timeout = '3s'")
        cur.execute("lock table core.sales in access exclusive mode")  # what the key build takes
        cur.connection.rollback()
        result = waiting.result(timeout=60)
    assert result["status"] == "committed" and result["rows_inserted"] == 1
    assert landing.query(PRIMARY_KEY) == [("sales_pkey", "PRIMARY KEY (_key)")]


def test_ragged_rows_are_quarantined_and_the_rest_loads(landing):
    result = landing.ingest("landing/sales/2024/e.csv", sales(
        "SO-1,1,2024-01-05,00042,Widget,2,10.50,21.00,GBP",
        "SO-2,1,2024-01-05,00043,Widget,1,10.50,12,30,GBP",
        "SO-3,1,2024-01-05,00043",
        "SO-4,1,2024-01-05,00043,Widget,1,10.50,10.50,GBP,"))
    assert (result["rows_read"], result["rows_inserted"], result["rows_quarantined"]) == (4, 2, 2)
    reasons = [r[0] for r in landing.query("select reason from meta.quarantine order by source_row")]
    assert reasons == ["row 3: 10 values where the header has 9", "row 4: 4 values where the header has 9"]


def test_an_unclosed_quote_fails_the_batch_naming_the_row_and_leaves_nothing(landing):
    key = "landing/sales/2024/f.csv"
    body = sales("SO-1,1,2024-01-05,00042,Widget,2,10.50,21.00,GBP",
                 'SO-2,1,2024-01-05,00043,"Widget,1,10.50,10.50,GBP',
                 "SO-3,1,2024-01-05,00043,Widget,1,10.50,10.50,GBP")
    with pytest.raises(LoadError, match=r"f.csv: row 3 \(line 3\): a quoted value opens there and never closes"):
        landing.ingest(key, body)
    assert landing.query("select count(*) from core.sales") == [(0,)]
    assert landing.query("select status, error like '%row 3%' from meta.batches") == [("failed", True)]
    fixed = landing.ingest(key, body.replace(b'"Widget', b"Widget"))
    assert fixed["rows_inserted"] == 3


@pytest.mark.parametrize(("bad", "error"), [
    # a quoted value with more after its closing quote: the csv module stops there
    ('SO-4,1,2024-01-05,00043,"Tin" round,1,10.50,10.50,GBP',
     r"g.csv: row 5 \(line 6\): .*a quoted field is probably never closed"),
    # a quoted value over two lines and too few values: a quote that took the next line with it
    ('SO-4,1,2024-01-05,00043,"Tin\nround",1',
     r"g.csv: row 5: a quoted value runs over several lines and leaves the record with 6 values where the header "
     r"has 9"),
])
def test_a_broken_record_in_a_file_read_record_by_record_fails_naming_its_row_and_line(landing, bad, error):
    """A file with an inch mark in an unquoted value is read record by record (the csv module's own reading);
    a record it cannot read there fails the batch, named by its row and the line it starts on (row 4 spans two
    lines, so row 5 starts on line 6)."""
    body = sales('SO-1,1,2024-01-05,00042,Pizza Base 12" x10,2,10.50,21.00,GBP',
                 'SO-2,1,2024-01-05,00042,"Hamper, large",1,10.50,10.50,GBP',
                 'SO-3,1,2024-01-05,00042,"Gift box\nwith ribbon",1,10.50,10.50,GBP',
                 bad)
    with pytest.raises(LoadError, match=error):
        landing.ingest("landing/sales/2024/g.csv", body)
    assert landing.query("select count(*) from core.sales") == [(0,)]


def test_wall_times_across_the_clock_changes_are_read_as_the_scheduler_reads_them(landing):
    """A time without an offset is the company's wall time (Europe/London); in the hour the autumn change repeats
    it is the first instant (BST), as a schedule at that time fires; one with an offset is that instant; a time
    the spring change skips is read an hour on."""
    crm = (b"Activity Id,Timestamp,Account,Channel,Outcome\n"
           b"A-1,2025-10-26 01:30:00,00042,Email,Sent\n"      # repeated: 00:30 UTC (BST), not 01:30 UTC (GMT)
           b"A-2,2025-10-26T01:30:00+00:00,00042,Email,Sent\n"  # the second 01:30, said with its offset
           b"A-3,2025-10-26 02:30,00042,Email,Sent\n"          # after the change: GMT
           b"A-4,2025-03-30 01:30:00,00042,Email,Sent\n"       # skipped by the spring change: 02:30 BST
           b"A-5,2025-07-01 12:00,00042,Email,Sent\n")
    assert landing.ingest("landing/crm/2025/crm.csv", crm)["rows_inserted"] == 5
    assert landing.query("select interaction_id, to_char(occurred_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI') "
                         "from core.interactions order by 1") == [
        ("A-1", "2025-10-26 00:30"), ("A-2", "2025-10-26 01:30"), ("A-3", "2025-10-26 02:30"),
        ("A-4", "2025-03-30 01:30"), ("A-5", "2025-07-01 11:00")]


def test_encodings_bom_and_cp1252(landing):
    crm = ("\ufeffActivity Id,Timestamp,Account,Channel,Outcome\n"
           "A-1,2024-01-05T10:15:00+00:00,00042,Email,Réponse reçue\n"
           "A-2,2024-04-02 09:00:00,00043,Phone,Callback\n").encode("utf-8")
    result = landing.ingest("landing/crm/2024/crm.csv", crm)
    assert result["rows_inserted"] == 2
    assert landing.query("select outcome from core.interactions where interaction_id = 'A-1'") == [("Réponse reçue",)]
    # a naive timestamp is read in the company's time zone (Europe/London is on BST in April: UTC+1)
    assert landing.query("select occurred_at = '2024-04-02 08:00:00+00' from core.interactions "
                         "where interaction_id = 'A-2'") == [(True,)]
    tax = "Period,Tax,Amount £,Due\n2024-01-01,VAT – quarterly,\"1,234.50\",2024-02-07\n".encode("cp1252")
    result = landing.ingest("landing/tax/2024/tax.csv", tax, config=with_read(landing.config, "tax", thousands=","))
    assert result["rows_inserted"] == 1
    assert landing.query("select tax_type, amount from core.tax") == [("VAT – quarterly", Decimal("1234.50"))]


def test_utf8_file_that_is_really_cp1252_names_the_line(landing):
    body = (HEADER + "SO-1,1,2024-01-05,00042,Caf\xe9 cr\xe8me,1,1.00,1.00,GBP\n").encode("cp1252")
    with pytest.raises(LoadError, match=r"g.csv: row 2 \(line 2\): not utf-8 text.*read.encoding"):
        landing.ingest("landing/sales/2024/g.csv", body)
    assert landing.query("select count(*) from core.sales") == [(0,)]
    # PostgreSQL's COPY finds it where the handler does not type the rows (a layout with a decimal comma)
    costs = "Expense ID;Date;Category;Supplier;Amount\nEX-1;03/01/2024;Caf\xe9;Byte Co;4,00\n".encode("cp1252")
    with pytest.raises(LoadError, match=r"costs.csv: line 2: not utf-8 text.*read.encoding"):
        landing.ingest("landing/costs/2024/costs.csv", costs, config=with_read(landing.config, "operating_costs",
                                                                               encoding="utf-8"))


def test_decimal_comma_thousands_dots_and_day_first_dates(landing):
    body = (b"Expense ID;Date;Category;Supplier;Amount\n"
            b"EX-1;03/01/2024;Rent;Harbour Estates;4.250,00\n"
            b"EX-2;31/01/2024;IT;\"Byte; Co\";(12,00)\n"
            b"EX-3;13/13/2024;IT;Byte Co;1,5\n")
    result = landing.ingest("landing/costs/2024/costs.csv", body)
    assert (result["rows_inserted"], result["rows_quarantined"]) == (1, 2)
    assert landing.query("select cost_date::text, amount from core.operating_costs") == [
        ("2024-01-03", Decimal("4250.00"))]
    reasons = [r[0] for r in landing.query("select reason from meta.quarantine order by source_row")]
    assert reasons == ["row 3: amount '(12,00)' is negative", "row 4: cost_date '13/13/2024' is not a valid date"]


@pytest.mark.parametrize(("dayfirst", "read_as"), [(True, "2024-02-01"), (False, "2024-01-02")])
def test_a_declared_day_order_alone_reads_every_slash_date(landing, dayfirst, read_as):
    """read.dayfirst without a date_format: 01/02/2024 is 1 February day first and 2 January month first, its
    time dropped; a value impossible in that order is refused, and the plan says what decided."""
    body = (b"Expense ID;Date;Category;Supplier;Amount\n"
            b"EX-1;01/02/2024;Rent;Harbour Estates;4.250,07\n"
            b"EX-2;01.02.2024 0:00;IT;Byte Co;1,99\n"
            b"EX-3;" + (b"02/13/2024" if dayfirst else b"13/02/2024") + b";IT;Byte Co;3,01\n")
    config = with_read(landing.config, "operating_costs", date_format=None, dayfirst=dayfirst)
    result = landing.ingest("landing/costs/2024/order.csv", body, config=config)
    assert (result["rows_inserted"], result["rows_quarantined"]) == (2, 1)
    # the same rows read by pandas with the layout's separators and the declared day order, not the loader's SQL
    frame = pd.read_csv(io.BytesIO(body), sep=";", decimal=",", thousands=".", dtype={"Amount": str}, nrows=2)
    day = [dt.datetime.strptime(v.split()[0].replace(".", "/"), "%d/%m/%Y" if dayfirst else "%m/%d/%Y").date()
           for v in frame["Date"]]
    expected = [(i, f"{d:%Y-%m-%d}", Decimal(a.replace(".", "").replace(",", ".")))
                for i, d, a in zip(frame["Expense ID"], day, frame["Amount"], strict=True)]
    assert [e[1] for e in expected] == [read_as, read_as]
    assert landing.query("select cost_id, cost_date::text, amount from core.operating_costs order by 1") == expected
    assert landing.query("select reason like '%is not a valid date' from meta.quarantine") == [(True,)]
    assert landing.query("select plan->>'date_order' from meta.batches") == [
        (f"{'day' if dayfirst else 'month'} first (read.dayfirst)",)]


@pytest.mark.parametrize(("dayfirst", "utc"), [(True, "2025-01-05 13:30"), (False, "2025-05-01 12:30")])
def test_a_declared_day_order_keeps_the_time_of_a_timestamp(landing, dayfirst, utc):
    """read.dayfirst without a date_format on a timestamp column: the day order is the setting's, and the time
    after the date is kept (a date column drops it), read as the company's wall time (GMT in January, BST in May)."""
    crm = (b"Activity Id,Timestamp,Account,Channel,Outcome\n"
           b"A-1,05/01/2025 13:30,00042,Email,Sent\n")
    # the same reading by Python's datetime and zoneinfo, not the loader's SQL
    wall = dt.datetime.strptime("05/01/2025 13:30", "%d/%m/%Y %H:%M" if dayfirst else "%m/%d/%Y %H:%M")
    expected = wall.replace(tzinfo=ZoneInfo(landing.config.company.timezone)).astimezone(dt.UTC)
    assert f"{expected:%Y-%m-%d %H:%M}" == utc
    config = with_read(landing.config, "interactions", date_format=None, dayfirst=dayfirst)
    assert landing.ingest("landing/crm/2025/order.csv", crm, config=config)["rows_inserted"] == 1
    assert landing.query("select to_char(occurred_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI') "
                         "from core.interactions") == [(utc,)]


def test_an_amount_in_another_currency_is_quarantined_naming_the_companys(landing):
    """The company keeps pounds: an amount written in dollars or with a currency code is not read as pounds,
    it is quarantined saying which currency the company keeps; its pounds load."""
    body = (b"Expense ID;Date;Category;Supplier;Amount\n"
            b"EX-1;03/01/2024;Rent;Harbour Estates;4.250,07\n"
            b"EX-2;03/01/2024;IT;Byte Co;$19,99\n"
            b"EX-3;03/01/2024;IT;Byte Co;USD 5,00\n")
    result = landing.ingest("landing/costs/2024/dollars.csv", body)
    assert (result["rows_inserted"], result["rows_quarantined"]) == (1, 2)
    # the pounds, read by pandas with the layout's separators (its float, to the cent): what loaded
    pounds = pd.read_csv(io.BytesIO(body), sep=";", decimal=",", thousands=".", nrows=1)["Amount"][0]
    assert landing.query("select amount from core.operating_costs") == [(Decimal(f"{pounds:.2f}"),)]
    assert landing.query("select reason from meta.quarantine order by source_row") == [
        ("row 3: amount '$19,99' is not in GBP, the company's currency",),
        ("row 4: amount 'USD 5,00' is not in GBP, the company's currency",)]


def test_white_space_of_every_kind_is_trimmed_and_old_mac_line_ends_read(landing):
    """Values pasted from web pages carry no-break spaces, tabs pad exports: trimmed as str.strip() trims, in
    every lane alike; a Total footer behind a no-break space is still a footer; lines that end in a carriage
    return alone are lines."""
    lines = [HEADER.rstrip("\n"),
             "SO-1,1,2024-01-05,00042,\u00a0Widget\u00a0,1,1.07,\t1.07\t,GBP",
             "SO-2,1,2024-01-05,00043,Gadget\u2003,2,2.03,4.06\u00a0,GBP",
             "\u00a0Total,,,,,,,5.13,",
             "\t,\u00a0,,,,,,,"]
    body = "\r".join(lines).encode() + b"\r"
    result = landing.ingest("landing/sales/2024/mac.csv", body)
    assert (result["rows_read"], result["rows_inserted"], result["rows_skipped"]) == (2, 2, 2)
    assert landing.query("select product, amount from core.sales order by order_id") == [
        ("Widget", Decimal("1.07")), ("Gadget", Decimal("4.06"))]
    assert landing.query("select plan->>'line_ends' from meta.batches") == [
        ("a carriage return alone, read as line breaks",)]


def test_a_line_break_inside_quotes_keeps_its_carriage_return_in_a_windows_file(landing):
    """Excel's "CSV (Windows)": records end in CR LF, and so does a line break typed inside a quoted product
    name. With an escaped quote too, the handler's lane hands that record on to be parsed on its own; its
    value keeps the CR LF the file holds, as pandas reads it."""
    body = (HEADER + 'SO-1,1,2024-01-05,00042,"Widget ""XL""\r\nblue",2,10.57,21.14,GBP\n'
            "SO-2,1,2024-01-05,00043,Gadget,1,3.09,3.09,GBP\n").replace("\n", "\r\n").replace("\r\r", "\r").encode()
    expected = pd.read_csv(io.BytesIO(body), dtype=str, keep_default_na=False)
    result = landing.ingest("landing/sales/2024/crlf.csv", body)
    assert result["rows_inserted"] == 2
    assert landing.query("select product from core.sales order by order_id") == \
        [(p,) for p in expected.sort_values("Order No")["Product"]]
    assert expected["Product"][0] == 'Widget "XL"\r\nblue'


def test_a_carriage_return_inside_an_unquoted_value_fails_the_batch_naming_it(landing):
    """In a CR LF file a lone carriage return in an unquoted value ends a record to the csv module: the row is
    not guessed at, the batch fails naming the row and the carriage return."""
    body = (HEADER.replace("\n", "\r\n") + "SO-1,1,2024-01-05,00042,Wid\rget,2,10.57,21.14,GBP\r\n"
            "SO-2,1,2024-01-05,00043,Gadget,1,3.09,3.09,GBP\r\n").encode()
    with pytest.raises(LoadError, match=r"cr.csv: row 2 \(line 2\) reads as more than one record; a carriage "
                                        r"return outside quotes ends a record there: quote that value or take"):
        landing.ingest("landing/sales/2024/cr.csv", body)
    assert landing.query("select count(*) from core.sales") == [(0,)]


def test_each_batch_keeps_the_plan_it_followed(landing):
    """What the loader decided for each delivery, in its ledger row: a first load straight in, typed in the
    handler; the same rows again known without typing; a change merged; a layout only SQL reads."""
    def plan(result):
        return landing.query("select plan from meta.batches where batch_id = %s", (result["batch_id"],))[0][0]

    rows = ["SO-1,1,2024-01-05,00042,Widget,2,10.57,21.14,GBP", "SO-2,1,2024-01-05,00043,Widget,1,3.09,3.09,GBP"]
    first = plan(landing.ingest("landing/sales/2024/p1.csv", sales(*rows)))
    assert first["into"].startswith("an empty table: its rows straight in")
    assert first["typing"] == ["typed in the handler: rows in their types' own spellings; the rest in SQL"]
    again = plan(landing.ingest("landing/sales/2024/p1-copy.csv", sales(*reversed(rows))))
    assert again["into"].startswith("merged") and again["typing"] == [
        "a loaded batch's rows again, every one as core holds it (2 rows): nothing typed, inserted or updated"]
    costs = plan(landing.ingest("landing/costs/2024/p.csv", b"Expense ID;Date;Category;Supplier;Amount\n"
                                                            b"EX-1;03/01/2024;Rent;Harbour Estates;4.250,07\n"))
    assert costs["typing"] == ["typed in SQL the careful way (the layout's spellings are rewritten)"]
    assert costs["date_order"] == "read.date_format %d/%m/%Y"


def test_leading_zero_ids_and_header_matching_ignore_case_and_spaces(landing):
    body = (b"  client code ,CLIENT NAME,Segment,Country,Since\n"
            b"00042,Acme Ltd,SME,GB,2020-05-01\n007,Bond & Co,Enterprise,GB,\n")
    assert landing.ingest("landing/clients/c.csv", body)["rows_inserted"] == 2
    assert landing.query("select client_id from core.clients order by 1") == [("00042",), ("007",)]


def test_missing_header_column_is_named(landing):
    body = b"Order No,Line,Order Date,Client Code,Product,Qty,Unit Price,Currency\n"
    with pytest.raises(LoadError, match=r"row 1: the header has no column 'Line Total' \(for amount\)"):
        landing.ingest("landing/sales/2024/h.csv", body)


def test_empty_files(landing):
    with pytest.raises(LoadError, match=r"empty.csv: the file is empty \(0 bytes\)"):
        landing.ingest("landing/sales/2024/empty.csv", b"")
    header_only = landing.ingest("landing/sales/2024/header-only.csv", sales())
    assert header_only["status"] == "committed" and header_only["rows_read"] == 0


def test_hostile_names_stay_inert(landing):
    tables_before = landing.query("select count(*) from pg_tables")
    header = ('Order No,Line,Order Date,Client Code,Product,Qty,Unit Price,Line Total,Currency,'
              '"x""); drop table core.sales; --"\n')
    body = (header + "SO-1,1,2024-01-05,00042,'; drop table core.sales; --,1,1.00,1.00,GBP,evil\n").encode()
    key = "landing/sales/2024/x'); drop table core.sales; --.csv"
    assert landing.ingest(key, body)["rows_inserted"] == 1
    assert landing.query("select product, _source_ref like %s from core.sales_lineage", ("%drop table%",)) == [
        ("'; drop table core.sales; --", True)]
    assert landing.query("select count(*) from pg_tables") == tables_before


def test_a_key_outside_every_prefix_is_a_clear_error(landing):
    with pytest.raises(LoadError, match="no source is configured for the object key 'elsewhere/x.csv'"):
        landing.ingest("elsewhere/x.csv", b"a\n1\n")


def changed_source(config, source: str, **settings):
    """The demo configuration with one source's settings changed."""
    data = config.model_dump(mode="json")
    data["sources"][source].update(settings)
    return type(config).model_validate(data)


def with_read(config, source: str, **read):
    """The demo configuration with one source's read options changed."""
    data = config.model_dump(mode="json")
    data["sources"][source]["read"].update(read)
    return type(config).model_validate(data)


def test_handler_accepts_s3_notifications_and_eventbridge_events(landing):
    landing.put("landing/sales/2024/n1.csv", sales("SO-1,1,2024-01-05,00042,Widget,1,1.00,1.00,GBP"))
    landing.put("landing/sales/2024/n%202.csv", sales("SO-2,1,2024-01-05,00042,Widget,1,1.00,1.00,GBP"))
    notification = {"Records": [{"eventSource": "aws:s3", "s3": {"bucket": {"name": landing.bucket},
                                                                "object": {"key": key}}}
                                for key in ("landing/sales/2024/n1.csv", "landing/sales/2024/n%25202.csv")]}
    summary = ingest_object.handler(notification)
    assert summary["committed"] == 2 and summary["failed"] == 0
    eventbridge = {"source": "aws.s3", "detail-type": "Object Created",
                   "detail": {"bucket": {"name": landing.bucket}, "object": {"key": "landing/sales/2024/n1.csv"}}}
    assert ingest_object.handler(eventbridge)["already_loaded"] == 1


@pytest.mark.parametrize("impossible_date", [False, True])
def test_both_typing_lanes_accept_and_reject_the_same_rows(landing, impossible_date):
    """Canonical rows take the fast lane, the rest the careful one, a date that does not exist (2025-02-30)
    among them. Either way the outcome is the same."""
    lines = ["SO-1,1,2024-01-05,00042,Widget,2,10.50,21.00,GBP",  # canonical
             "SO-2,1,2024-01-05,00042,Widget,2, 10.50 ,£21.00,GBP",  # needs rewriting
             "SO-3,1,2024-01-05,00042,Widget,2,10.50,NaN,GBP",  # numeric input would take it; never money
             "SO-4,1,2024-01-05,00042,Widget,2,10.50,1e3,GBP",
             "SO-5,1,2024-01-05,00042,Widget,2,10.50,-21.00,GBP",
             "Total,1,2024-01-05,00042,Widget,2,10.50,21.00,GBP"]  # looks canonical, but a footer
    if impossible_date:
        lines.append("SO-6,1,2025-02-30,00042,Widget,2,10.50,21.00,GBP")
    result = landing.ingest(f"landing/sales/2024/lanes-{impossible_date}.csv", sales(*lines),
                            config=changed_source(landing.config, "sales", amounts="positive"))
    assert (result["rows_inserted"], result["rows_skipped"]) == (2, 1)
    assert result["rows_quarantined"] == 3 + impossible_date
    assert landing.query("select order_id, amount from core.sales order by 1") == [
        ("SO-1", Decimal("21.00")), ("SO-2", Decimal("21.00"))]
    reasons = [r[0] for r in landing.query("select reason from meta.quarantine order by source_row")]
    assert reasons[:3] == ["row 4: amount 'NaN' is not a number", "row 5: amount '1e3' is not a number",
                           "row 6: amount '-21.00' is negative"]


MIXED = sales(  # canonical rows, rows only the careful lane reads, rejects, a blank row
    "SO-1,1,2024-01-05,00042,Widget,2,10.50,21.00,GBP",
    "SO-1,2,2024-01-05,00042,Gadget, 3 ,£1.20,£3.60,GBP",
    "SO-2,1,2024-1-6,00043,Widget,1,0.20,0.20,GBP",
    "SO-2,2,2024-01-06,00043,Widget,x,0.20,0.20,GBP",
    ",,,,,,,,",
    "SO-3,1,,00045,Widget,1,5.00,5.00,GBP",
    "SO-4,1,2024-01-07,00044,,4,2.50,10.00,")


def test_a_first_load_straight_into_the_empty_table_gives_what_the_staged_merge_gives(landing):
    """The same file loaded into an empty table (its canonical rows straight in) and into a table that
    already has rows (every row staged, then merged): the same rows, hashes, ledger and reasons."""
    def outcome(batch_id):
        rows = landing.query("select order_id, line_no, order_date, client_id, product, quantity, unit_price, amount,"
                             " currency, _source_row, _row_hash from core.sales where _batch_id = %s "
                             "order by 1, 2", (batch_id,))
        reasons = landing.query("select source_row, reason from meta.quarantine where batch_id = %s order by 1",
                                (batch_id,))
        return rows, reasons, ledger(landing, batch_id)

    direct = landing.ingest("landing/sales/2024/m.csv", MIXED)
    first = outcome(direct["batch_id"])
    landing.query("truncate core.sales, meta.quarantine; select 1")
    landing.ingest("landing/sales/2024/other.csv", sales("SO-9,1,2024-01-05,00042,Widget,1,1.00,1.00,GBP"))
    staged = landing.ingest("landing/sales/2024/m2.csv", MIXED)
    assert outcome(staged["batch_id"]) == first
    rows, reasons, entry = first
    assert [r[:2] for r in rows] == [("SO-1", 1), ("SO-1", 2), ("SO-2", 1), ("SO-4", 1)]
    assert rows[1][5:8] == (3, Decimal("1.20"), Decimal("3.60")) and rows[3][4] is None and rows[3][8] == "GBP"
    assert reasons == [(5, "row 5: quantity 'x' is not a number"), (7, "row 7: order_date is empty")]
    assert reconciles(entry) and (entry["rows_read"], entry["rows_inserted"], entry["rows_quarantined"],
                                  entry["rows_skipped"]) == (6, 4, 2, 1)
    assert entry["amount_loaded"] == Decimal("34.80")


LOADED = [f"SO-{n},1,2024-02-{n % 28 + 1:02d},00042,Widget,2,10.50,21.00,GBP" for n in range(1, 31)]
RE_EXPORT = (LOADED[:24]  # as they were
             + ["SO-25,1,2024-02-26,00042,Widget,2,10.5,21,GBP",  # the same values, written otherwise
                "SO-26,1,2024-02-27,00042,Widget,3,10.50,31.50,GBP",  # changed
                "SO-40,1,2024-03-01,00042,Widget,1,10.50,10.50,GBP",  # new
                "SO-41,1,2024-03-01,00042,Widget,1,10.50,1O.50,GBP",  # bad
                LOADED[0],  # an exact copy of a row already loaded
                "SO-2,1,2024-02-03,00042,Widget,9,10.50,94.50,GBP"])  # a loaded key again, with other values


def _batch_outcome(landing, batch_id: int) -> tuple:
    rows = landing.query("select order_id, quantity, amount, _batch_id = %s, _source_row, _row_hash from core.sales "
                         "order by 1", (batch_id,))
    reasons = landing.query("select source_row, reason, reason_code from meta.quarantine where batch_id = %s "
                            "order by 1", (batch_id,))
    history = landing.query("select order_id, quantity from core.sales_history order by 1")
    return rows, reasons, history, ledger(landing, batch_id)


TRUNCATE_SALES = "truncate meta.quarantine, core.sales, core.sales_history, meta.batches cascade; select 1"


@pytest.mark.parametrize("in_handler", [False, True], ids=["sql-lanes", "handler"])
@pytest.mark.parametrize(("lines", "found", "expected"), [
    (LOADED, 30, (30, 0, 0, 30, 0, 0)),
    (RE_EXPORT[:28], 0, (28, 1, 1, 25, 0, 1)),
    (RE_EXPORT, 0, (30, 1, 2, 24, 1, 2)),
], ids=["same-rows", "mixed", "with-repeats"])
def test_a_re_export_found_loaded_by_its_hashes_gives_what_typing_every_row_gives(landing, monkeypatch, found_unchanged,
                                                                                    in_handler, lines, found, expected):
    """A re-export under a new name: the handler, which hashes every row anyway, knows a file that is exactly
    a loaded batch's rows again, and nothing is typed; any other file (and every file the SQL lanes type) is
    typed and merged. Either way the outcome (rows, lineage, history, reasons, ledger) is what typing and
    merging every row gives, with repeats of loaded keys in the batch too."""
    monkeypatch.setattr(ingest_object.BatchLoad, "type_in_handler", in_handler)
    outcomes = []
    for recognise in (True, False):
        monkeypatch.setattr(ingest_object.BatchLoad, "recognise_unchanged", recognise)
        landing.query(TRUNCATE_SALES)
        landing.ingest("landing/sales/2024/loaded.csv", sales(*LOADED))
        again = landing.ingest("landing/sales/2024/re-export.csv", sales(*lines))
        outcomes.append(_batch_outcome(landing, again["batch_id"]))
    # only the handler's pass knows a batch again, and only when asked to
    assert found_unchanged == ([found] if in_handler else [])
    assert outcomes[0] == outcomes[1]
    entry = outcomes[0][3]
    assert reconciles(entry)
    assert (entry["rows_read"], entry["rows_inserted"], entry["rows_updated"], entry["rows_unchanged"],
            entry["rows_duplicate"], entry["rows_quarantined"]) == expected


def test_rows_found_loaded_are_looked_at_again_when_another_batch_changed_the_table_meanwhile(landing):
    """The rows a re-export finds already loaded are found before its merge turn. If another batch changes
    rows of the table before the turn comes, they are typed and merged after all: the later batch wins."""
    landing.ingest("landing/sales/2024/loaded.csv", sales(*LOADED))
    landing.put("landing/sales/2024/re-export.csv", sales(*LOADED))
    # the turn's holder plays a batch changing SO-3 while the re-export waits
    with waiting_for_its_turn(landing, "landing/sales/2024/re-export.csv") as (cur, waiting):
        cur.execute("insert into meta.batches (source, source_kind, target_table, source_ref, status, "
                    "rows_read, rows_updated) values ('sales', 's3_csv', 'sales', 'by hand', 'committed', 1, 1) "
                    "returning batch_id")
        other = cur.fetchone()[0]
        cur.execute("update core.sales set quantity = 7, _row_hash = md5('changed'), _batch_id = %s "
                    "where order_id = 'SO-3'", (other,))
        cur.connection.commit()
        result = waiting.result(timeout=60)
    assert (result["rows_updated"], result["rows_unchanged"]) == (1, 29)
    assert landing.query("select quantity from core.sales where order_id = 'SO-3'") == [(2,)]
    assert landing.query("select quantity from core.sales_history where order_id = 'SO-3' order by _replaced_at"
                         ) == [(2,), (7,)]


def test_money_sums_keep_every_digit(landing):
    """numeric keeps every digit of an amount: so do the ledger's sums (Python's default context keeps 28)."""
    result = landing.ingest("landing/sales/2024/big.csv", sales(
        "SO-1,1,2024-01-05,00042,Widget,1,1,123456789012345678901234567890.05,GBP",
        "SO-2,1,2024-01-05,00042,Widget,1,1,0.05,GBP",
        "SO-3,1,2024-01-05,00042,Widget,1,1,1O.00,GBP",
        "SO-2,1,2024-01-05,00042,Widget,1,1,0.05,GBP"))
    entry = ledger(landing, result["batch_id"])
    assert entry["amount_loaded"] == Decimal("123456789012345678901234567890.10") and reconciles(entry)
