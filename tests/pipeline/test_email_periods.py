"""What the operations email compares a period with, and what it says when the costs end inside the period:
worked out on the calendar by hand, no warehouse needed."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from pipeline.expense_email import CategoryTotal, ExpenseReport, _plain_text, change_text
from pipeline.periods import Period, trailing
from playbook.config import load_config


@pytest.mark.parametrize(("period", "compared_with"), [
    # a month to its end day: the month before it, so each holds one 1st of the month (one rent)
    (trailing("month", date(2024, 4, 1)), Period(date(2024, 2, 2), date(2024, 3, 1))),
    (trailing("month", date(2024, 3, 31)), Period(date(2024, 2, 1), date(2024, 2, 29))),
    # a calendar month: the calendar month before, whatever the lengths
    (Period(date(2024, 3, 1), date(2024, 3, 31)), Period(date(2024, 2, 1), date(2024, 2, 29))),
    (Period(date(2024, 5, 1), date(2024, 5, 31)), Period(date(2024, 4, 1), date(2024, 4, 30))),
    # anything else: the same number of days just before
    (trailing("week", date(2024, 5, 20)), Period(date(2024, 5, 7), date(2024, 5, 13))),
    (trailing("day", date(2024, 5, 20)), Period(date(2024, 5, 19), date(2024, 5, 19))),
    (Period(date(2024, 1, 10), date(2024, 1, 20)), Period(date(2023, 12, 30), date(2024, 1, 9))),
])
def test_a_period_is_compared_with_the_month_before_a_month_and_otherwise_the_same_length(period, compared_with):
    assert period.comparable() == compared_with


def test_days_after_the_last_day_of_costs_are_missing_not_free():
    """15 to 25 May with costs loaded to 20 May: only 15 to 20 May is compared (with 9 to 14 May), the daily
    average is over 6 days, and the email says why."""
    rent = CategoryTotal("Rent", Decimal("600.00"), 2, None, previous=Decimal("300.00"), year_before=None)
    report = ExpenseReport(Period(date(2024, 5, 15), date(2024, 5, 25)), [rent], [], data_end=date(2024, 5, 20))
    assert report.compared == Period(date(2024, 5, 15), date(2024, 5, 20))
    assert report.previous_period == Period(date(2024, 5, 9), date(2024, 5, 14))
    text = _plain_text(report, load_config(), "note")
    assert ("The costs loaded so far end on 20 May 2024: the days after are missing, not free, so 15 May 2024 – "
            "20 May 2024 (6 days) is what is compared.") in text
    average = next(line for line in text.splitlines() if line.startswith("Daily average"))
    assert "£100.00" in average and "£50.00" in average  # 600 / 6 days against 300 / 6 days
    before = ExpenseReport(Period(date(2024, 5, 22), date(2024, 5, 25)), [], [], data_end=date(2024, 5, 20))
    assert before.compared is None and before.previous_period is None
    assert "The costs loaded so far end on 20 May 2024, before this period" in _plain_text(before, load_config(), "")


@pytest.mark.parametrize(("now", "then", "written"), [
    ("10.00", "10.001", "£0.00 (0.0%)"),  # rounded before it is signed: no +£0.00, no -0.0%
    ("10.004", "10.00", "£0.00 (0.0%)"),
    ("1.00", "3.00", "-£2.00 (-66.7%)"),
    ("5.00", "0", "+£5.00 (new)"),
    ("0", "0", "£0.00"),
    ("100.00", "-50.00", "+£150.00 (+300.0%)"),  # against a credit: the percent of its size
    ("7.00", None, "no data"),
])
def test_a_change_is_written_as_it_is_rounded(now, then, written):
    assert change_text(Decimal(now), None if then is None else Decimal(then), "GBP") == written
