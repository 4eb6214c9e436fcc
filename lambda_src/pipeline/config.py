"""The company configuration: what the sources look like, how they map onto the canonical model.

Consultants change this, not code. It is validated on load; every error names the field it is about.
The Lambda functions receive the validated JSON form of it (see `PIPELINE_CONFIG_URI`).
"""

from __future__ import annotations

import re
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.model import TABLES

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_SCHEDULE = re.compile(r"^(cron\((\S+ ){5}\S+\)|rate\(\d+ (minute|minutes|hour|hours|day|days)\))$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Company(Strict):
    name: str = Field(min_length=1)
    timezone: str
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. GBP")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as Europe/London)") from None
        return value


class ReadOptions(Strict):
    """How a file is laid out: every knob a real export needs, none in code."""

    sheets: list[str] | None = Field(None, description="sheet names to read (Excel)")
    sheet_pattern: str | None = Field(None, description="regular expression on sheet names (Excel)")
    header_row: int = Field(0, ge=0, description="0-based row of the header")
    skip_rows_matching: str | None = Field(
        r"(?i)^\s*(grand\s+)?totals?(\s|:|$)",
        description="rows whose first non-empty cell matches are footers, not data (a regular expression that "
                    "PostgreSQL and Python read alike: no \\b, \\d; use [0-9], (\\s|$))")
    encoding: Literal["utf-8", "utf-8-sig", "cp1252", "latin-1"] = "utf-8"
    delimiter: str = Field(",", min_length=1, max_length=1)
    quotechar: str = Field('"', min_length=1, max_length=1)
    decimal: Literal[".", ","] = "."
    thousands: Literal[",", ".", " ", "'", "_"] | None = None
    dayfirst: bool = False
    date_format: str | None = Field(None, description="strftime format of dates, e.g. %d/%m/%Y")
    chunk_rows: int = Field(100_000, ge=1_000, le=1_000_000)

    @field_validator("sheet_pattern", "skip_rows_matching")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _separators_differ(self) -> ReadOptions:
        if self.thousands is not None and self.thousands == self.decimal:
            raise ValueError("thousands and decimal separators must differ")
        return self


class SourceConfig(Strict):
    kind: Literal["excel", "s3_csv", "rest_api"]
    table: str = Field(description="canonical table the source feeds")
    description: str = ""
    prefix: str | None = Field(None, description="landing bucket prefix of the files, e.g. landing/payments/")
    schedule: str = Field(description="AWS schedule expression: cron(...) or rate(...)")
    columns: dict[str, str] = Field(description="canonical column -> header in the source")
    natural_key: list[str] | None = None
    read: ReadOptions = ReadOptions()
    expected_every_days: int | None = Field(None, ge=1, description="a delivery is due this often")

    @field_validator("table")
    @classmethod
    def _known_table(cls, value: str) -> str:
        if value not in TABLES:
            raise ValueError(f"unknown table {value!r}; choose one of {', '.join(TABLES)}")
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule_shape(cls, value: str) -> str:
        if not _SCHEDULE.match(value.strip()):
            raise ValueError(f"{value!r} is not an AWS schedule expression such as cron(0 6 * * ? *) or rate(1 day)")
        return value.strip()

    @field_validator("prefix")
    @classmethod
    def _prefix_shape(cls, value: str | None) -> str | None:
        if value is not None and (not value.endswith("/") or value.startswith("/") or ".." in value):
            raise ValueError(f"{value!r} must be a relative key prefix ending in '/', e.g. landing/sales/")
        return value

    @model_validator(mode="after")
    def _mapping_fits_the_table(self) -> SourceConfig:
        table = TABLES[self.table]
        unknown = sorted(set(self.columns) - set(table.column_names))
        if unknown:
            raise ValueError(f"columns: {', '.join(unknown)} not in table {self.table} "
                             f"(its columns: {', '.join(table.column_names)})")
        missing = [c.name for c in table.columns if c.required and c.name not in self.columns]
        if missing:
            raise ValueError(f"columns: required column(s) {', '.join(missing)} of {self.table} are not mapped")
        for key in self.key:
            if key not in self.columns:
                raise ValueError(f"natural_key: {key!r} is not a mapped column")
        if self.kind in ("excel", "s3_csv") and not self.prefix:
            raise ValueError(f"prefix: a {self.kind} source needs the landing prefix its files arrive under")
        return self

    @property
    def key(self) -> tuple[str, ...]:
        return tuple(self.natural_key or TABLES[self.table].natural_key)


class EmailReport(Strict):
    sender: str
    recipients: list[str] = Field(min_length=1)
    period: Literal["day", "week", "month"] = "day"
    schedule: str = "cron(0 8 * * ? *)"

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        if not _EMAIL.match(value):
            raise ValueError(f"{value!r} is not an email address")
        return value

    @field_validator("recipients")
    @classmethod
    def _recipients(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not _EMAIL.match(v)]
        if bad:
            raise ValueError(f"not email addresses: {', '.join(bad)}")
        return value


class Reports(Strict):
    top_n: int = Field(10, ge=1, le=100)
    activity_days: int = Field(365, ge=7)
    schedule: str = "cron(30 7 * * ? *)"
    email: EmailReport


class PipelineConfig(Strict):
    company: Company
    sources: dict[str, SourceConfig] = Field(min_length=1)
    reports: Reports

    @field_validator("sources")
    @classmethod
    def _source_names(cls, value: dict[str, SourceConfig]) -> dict[str, SourceConfig]:
        for name in value:
            if not _NAME.match(name):
                raise ValueError(f"source name {name!r} must be lower-case letters, digits and _ (max 40)")
        prefixes = [s.prefix for s in value.values() if s.prefix]
        for a in prefixes:
            for b in prefixes:
                if a != b and b.startswith(a):
                    raise ValueError(f"prefix {b!r} lies inside {a!r}: every source needs its own prefix")
        return value

    def source_for_key(self, key: str) -> tuple[str, SourceConfig]:
        """The source whose landing prefix holds an object key."""
        for name, source in self.sources.items():
            if source.prefix and key.startswith(source.prefix):
                return name, source
        raise KeyError(f"no source is configured for the object key {key!r}")


class ConfigError(ValueError):
    """An invalid configuration; the message names the file and every bad field."""


def format_errors(origin: str, error: ValidationError) -> str:
    lines = []
    for e in error.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{origin}: {where}: {msg}")
    return "\n".join(lines)


def parse_config(data: object, origin: str = "<configuration>") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(origin, exc)) from None
