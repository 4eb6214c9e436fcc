"""How a batch reads its source's text: the layout the source declares, and what the batch settles once,
before typing a row, about what the layout leaves open: the order of day and month in its dates.

Never guessed: the order comes from the source's settings (read.dayfirst, read.date_format), else the
company's locale, else the file itself when one of its dates settles it (13/02/2024 can only be day first);
otherwise the batch fails with the setting to add. The decision is written in the batch's plan, in the
ledger, where a person can read it later.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass

from psycopg2 import sql

from pipeline.config import ReadOptions
from pipeline.sources import LoadError, RawSheet

# a day, month and year in that order or the month first, as 1/2/2024, 01.02.2024 or 1-2-2024
DAY_MONTH_YEAR = r"^([0-9]{1,2})[/.-]([0-9]{1,2})[/.-]([0-9]{4})"
_ORDER = {True: "day first", False: "month first"}


@dataclass(frozen=True)
class Reading:
    """How a batch reads its source's text: the source's layout, the day/month order the batch settled on
    (None: not known, and no value needs it), and the company's currency, whose sign or code an amount may
    carry."""

    options: ReadOptions
    dayfirst: bool | None = None
    currency: str | None = None

    @classmethod
    def of(cls, options: ReadOptions, currency: str | None = None) -> Reading:
        return cls(options, options.dayfirst, currency)


def _day(day: int, month: int) -> str:
    return f"{day} {calendar.month_name[month]}"


class SettledReading:
    """BatchLoad's part that settles how each sheet's text reads (mixed into pipeline.loader.BatchLoad)."""

    def _declared_date_order(self) -> bool | None:
        """The day/month order the source or the company declares (None: neither does), noted in the plan."""
        options, company = self.delivery.config.read, self.company
        if options.date_format:
            self.plan["date_order"] = f"read.date_format {options.date_format}"
        elif options.dayfirst is not None:
            self.plan["date_order"] = f"{_ORDER[options.dayfirst]} (read.dayfirst)"
        elif company.dayfirst is not None:
            self.plan["date_order"] = f"{_ORDER[company.dayfirst]} (company.locale {company.locale})"
            return company.dayfirst
        return options.dayfirst

    def _reading(self, cur, sheet: RawSheet, mapped: list) -> Reading:
        """How the sheet's text is typed (see Reading), its dates' day/month order settled
        once its rows are in raw: by the source's settings, the company's locale or the file's own dates."""
        if sheet.name not in self._readings:
            options = self.delivery.config.read
            dayfirst = self._dayfirst
            dated = [m for m in mapped if m.column.type in ("date", "timestamp")]
            if dayfirst is None and not options.date_format and dated:
                dayfirst = self._settle_date_order(cur, sheet, dated)
            self._readings[sheet.name] = Reading(options, dayfirst, self.company.currency)
        return self._readings[sheet.name]

    def _settle_date_order(self, cur, sheet: RawSheet, dated: list) -> bool | None:
        """The order of day and month in dates such as 01/02/2024, from the sheet's own dates, when nothing
        declares it: a first part above 12 is a day, a second part above 12 is a day. Never guessed: dates
        that could be read either way, with none to settle them, or dates in both orders fail the batch."""
        from pipeline.typing_sql import trimmed

        values = sql.SQL(" union all ").join(sql.SQL(
            "select r._row, {v} as value, x[1]::int as a, x[2]::int as b "
            "from raw r cross join lateral regexp_match({v}, {shape}) x").format(
            v=trimmed(sql.SQL("r.{}").format(sql.Identifier(m.raw))), shape=sql.Literal(DAY_MONTH_YEAR + r"(\s|$)"))
            for m in dated)
        cur.execute(sql.SQL(
            "select kind, min(_row), (array_agg(value order by _row))[1] from (select _row, value, case "
            "when a > 12 and b between 1 and 12 then 'day' when b > 12 and a between 1 and 12 then 'month' "
            "when a <> b and a between 1 and 12 and b between 1 and 12 then 'either' end as kind from ({}) d) k "
            "where kind is not null group by kind").format(values))
        found = {kind: (row, value) for kind, row, value in cur.fetchall()}
        where = self.delivery.display + (f", sheet '{sheet.name}'" if sheet.name else "")
        setting = (f"set read.dayfirst: true (day first) or false (month first) for source '{self.delivery.source}', "
                   "or company.locale")
        if "day" in found and "month" in found:
            (r1, v1), (r2, v2) = found["day"], found["month"]
            raise LoadError(f"{where}: dates are written in both orders: row {r1} '{v1}' has the day first, row {r2} "
                            f"'{v2}' the month first; correct the file, or {setting}")
        for kind, dayfirst in (("day", True), ("month", False)):
            if kind in found:
                row, value = found[kind]
                self._dayfirst = dayfirst
                self.plan["date_order"] = f"{_ORDER[dayfirst]}, settled by the file ({where}, row {row}: '{value}')"
                return dayfirst
        if "either" in found:
            row, value = found["either"]
            a, b = (int(p) for p in re.match(DAY_MONTH_YEAR, value).groups()[:2])
            raise LoadError(f"{where}, row {row}: '{value}' could be {_day(a, b)} or {_day(b, a)}, and no date of the "
                            f"file settles the order; {setting}")
        return True  # no date needs the order (12/12/2024 reads the same either way)
