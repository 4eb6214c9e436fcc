"""Files shaped like real SME exports, loaded end to end through the ingest handler's path: the warehouse
holds what an independent reading of each file (pandas, openpyxl) says it holds, or the batch fails or
quarantines exactly the rows it should."""

from __future__ import annotations

import shutil

import pytest
from psycopg2 import sql

from pipeline.config import parse_config
from pipeline.model import TABLES
from pipeline.sources import LoadError
from tests.pipeline import corpus
from tests.pipeline.test_ingest_csv import ledger, reconciles

pytestmark = pytest.mark.stack

needs_soffice = pytest.mark.skipif(
    shutil.which("soffice") is None,
    reason="LibreOffice is not installed (soffice not on PATH): scripts/system-deps.sh installs libreoffice-calc-nogui")


def config_for(landing, fixture: corpus.Fixture):
    """The demo configuration with the fixture's source added (and its company settings, if any)."""
    data = landing.config.model_dump(mode="json")
    data["sources"][corpus.SOURCE] = {**fixture.source, "prefix": corpus.PREFIX, "schedule": "rate(1 day)"}
    for name, value in fixture.company.items():
        if value is None:
            data["company"].pop(name, None)
        else:
            data["company"][name] = value
    return parse_config(data, f"corpus: {fixture.name}")


def loads_as_read(landing, fixture: corpus.Fixture) -> None:
    """Load the fixture as the handler does; check the outcome against the independent reading."""
    config = config_for(landing, fixture)
    expected = fixture.expected
    reading = corpus.read_independently(fixture, config.company.model_dump(mode="json"))
    # the independent reading agrees with what the file was made to hold
    assert (reading.failed is not None, sorted(reading.refused), reading.loaded, reading.total) == (
        bool(expected.failed), sorted(expected.quarantined), expected.loaded, expected.total), reading
    table = TABLES[fixture.source["table"]]
    in_core = sql.SQL("select count(*), coalesce(sum({}), 0) from core.{}").format(
        sql.Identifier(table.amount), sql.Identifier(table.name))
    key = corpus.PREFIX + fixture.name

    if expected.failed:
        with pytest.raises(LoadError) as failure:
            landing.ingest(key, fixture.body, config=config)
        batches = landing.query("select status, error from meta.batches")
        assert [status for status, _ in batches] == ["failed"]
        for fragment in expected.failed:
            assert fragment in str(failure.value) and fragment in batches[0][1], (fragment, batches[0][1])
        assert landing.query(in_core) == [(0, 0)]
        return

    result = landing.ingest(key, fixture.body, config=config)
    assert result["status"] == "committed", result
    reasons = dict(landing.query("select source_row, reason from meta.quarantine where batch_id = %s",
                                 (result["batch_id"],)))
    count, total = landing.query(in_core)[0]
    assert {"quarantined": sorted(reasons), "loaded": count, "total": total, "read": result["rows_read"],
            "skipped": result["rows_skipped"]} == {
        "quarantined": sorted(reading.refused), "loaded": reading.loaded, "total": reading.total,
        "read": reading.rows_read, "skipped": reading.skipped}, reasons
    for row, fragments in expected.quarantined.items():
        assert all(f in reasons[row] for f in fragments), (row, reasons[row], fragments)
    assert reconciles(ledger(landing, result["batch_id"]))
    first_key = table.natural_key[0]
    for key_value, column, value in expected.values:
        found = landing.query(sql.SQL("select distinct {} from core.{} where {} = %s").format(
            sql.Identifier(column), sql.Identifier(table.name), sql.Identifier(first_key)), (key_value,))
        assert found == [(value,)], (key_value, column)


# -- 1. bank statements


def test_bank_statement_with_the_header_on_row_5_and_a_closing_balance_below(landing):
    loads_as_read(landing, corpus.bank_statement_header_on_row_5())


def test_bank_statement_with_the_header_on_row_12_and_total_in_the_third_column(landing):
    loads_as_read(landing, corpus.bank_statement_header_on_row_12_total_in_third_column())


# -- 2. decimal commas


def test_accounting_workbook_with_decimal_commas_in_text_and_numeric_cells(landing):
    loads_as_read(landing, corpus.accounting_workbook_with_decimal_commas())


def test_accounting_csv_with_semicolons_and_decimal_commas(landing):
    loads_as_read(landing, corpus.accounting_csv_with_semicolons_and_decimal_commas())


# -- 3. three writers, and Excel's float noise


def test_sales_workbook_written_by_xlsxwriter(landing):
    loads_as_read(landing, corpus.sales_workbook_by_xlsxwriter())


def test_sales_workbook_written_by_openpyxl(landing):
    loads_as_read(landing, corpus.sales_workbook_by_openpyxl())


@pytest.mark.office
@needs_soffice
def test_sales_csv_saved_as_a_workbook_by_libreoffice(landing):
    loads_as_read(landing, corpus.sales_workbook_by_libreoffice_from_csv())


@pytest.mark.office
@needs_soffice
def test_sales_workbook_resaved_by_libreoffice(landing):
    loads_as_read(landing, corpus.sales_workbook_resaved_by_libreoffice())


def test_sales_workbook_with_excel_17_digit_float_noise(landing):
    loads_as_read(landing, corpus.sales_workbook_with_excel_float_noise())


# -- 4. headers


def test_csv_headers_padded_with_spaces_and_a_repeated_name(landing):
    loads_as_read(landing, corpus.sales_csv_with_padded_and_repeated_headers())


def test_workbook_headers_padded_broken_over_lines_and_repeated(landing):
    loads_as_read(landing, corpus.payments_workbook_with_untidy_headers())


# -- 5. placeholders


def test_csv_placeholders_are_text_in_text_columns_and_refused_as_amounts(landing):
    loads_as_read(landing, corpus.payments_csv_with_placeholders())


def test_workbook_placeholders_are_text_in_text_columns_and_refused_as_amounts(landing):
    loads_as_read(landing, corpus.payments_workbook_with_placeholders())


# -- 6. currency marks


def test_amounts_with_the_company_currency_sign_or_code_load_and_others_are_refused(landing):
    loads_as_read(landing, corpus.costs_csv_with_currency_marks(landing.config.company.currency))


def test_decimal_comma_amounts_with_currency_words(landing):
    loads_as_read(landing, corpus.costs_csv_decimal_comma_with_currency_words(landing.config.company.currency))


# -- 7. text dates


def test_month_first_dates_with_times(landing):
    loads_as_read(landing, corpus.costs_csv_month_first_with_times())


def test_two_digit_years_are_refused_without_a_date_format(landing):
    loads_as_read(landing, corpus.costs_csv_two_digit_years_without_a_format())


def test_two_digit_years_load_with_a_date_format(landing):
    loads_as_read(landing, corpus.costs_csv_two_digit_years_with_a_format())


def test_an_ambiguous_day_month_file_fails_naming_read_dayfirst(landing):
    loads_as_read(landing, corpus.costs_csv_ambiguous_day_month())


def test_one_day_first_value_settles_the_order_of_the_whole_file(landing):
    loads_as_read(landing, corpus.costs_csv_one_date_settles_day_first())


# -- 8. Excel's Unicode Text


def test_excel_unicode_text_export_utf16_with_bom(landing):
    loads_as_read(landing, corpus.excel_unicode_text_export())


def test_unicode_text_export_without_bom_declared_utf16le(landing):
    loads_as_read(landing, corpus.unicode_text_export_without_bom())


# -- 9. quotes


def test_10000_rows_with_an_inch_mark_in_an_unquoted_value_on_row_100(landing):
    loads_as_read(landing, corpus.sales_csv_with_stray_inch_marks((100,)))


def test_inch_marks_in_unquoted_values_on_two_rows_far_apart(landing):
    loads_as_read(landing, corpus.sales_csv_with_stray_inch_marks((100, 7000)))


def test_an_inch_mark_past_the_first_megabyte_is_found(landing):
    """The file's quotes are surveyed a megabyte at a time: a stray one in a later megabyte (row 19,000 of
    20,000, about 1.6 MB in) sends the file through the reader of values, as one in the first does."""
    fixture = corpus.sales_csv_with_stray_inch_marks((19000,), n=20_000)
    assert fixture.body.index(b'10" square') > 1 << 20
    loads_as_read(landing, fixture)


def test_quoted_line_breaks_are_one_value_and_rows_are_records(landing):
    loads_as_read(landing, corpus.costs_csv_with_quoted_line_breaks())


def test_windows_line_ends_inside_quotes_are_kept_in_the_value(landing):
    loads_as_read(landing, corpus.costs_csv_with_windows_line_ends_inside_quotes())


def test_a_quote_that_never_closes_fails_the_batch_naming_where_it_opened(landing):
    loads_as_read(landing, corpus.costs_csv_with_a_quote_that_never_closes())


# -- 10. Excel dates


def test_the_fictitious_1900_leap_day_is_refused(landing):
    loads_as_read(landing, corpus.payments_workbook_with_the_1900_leap_day())


def test_the_fictitious_1900_leap_day_is_refused_in_a_later_piece_of_the_sheet(landing, monkeypatch):
    """Rows are copied in pieces; the day that never was is found in whichever piece holds it (one row each
    here, so it sits in the piece after the first, never in one that ends just before it)."""
    monkeypatch.setattr("pipeline.sources.excel.PIECE_ROWS", 1)
    loads_as_read(landing, corpus.payments_workbook_with_the_1900_leap_day())


def test_dates_outside_the_configured_range_are_quarantined(landing):
    loads_as_read(landing, corpus.payments_workbook_with_out_of_range_dates())
