"""The company configuration: what the sources look like, how they map onto the canonical model.

Consultants change this, not code. It is validated on load; every error names the field it is about.
The Lambda functions receive the validated JSON form of it (see `PIPELINE_CONFIG_URI`).
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.model import KEY_TYPES, ROW_KEY, TABLES
from pipeline.schedules import ScheduleError, croniter_expression, local_time, rate_seconds
from pipeline.sources.kinds import API_PAGES_PREFIX, DRY_RUN_PREFIX, KINDS, source_kind

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _schedule(value: str) -> str:
    """An AWS schedule expression, read as the scheduler, the freshness check and the API windows read it
    (pipeline.schedules): a cron expression croniter cannot evaluate is refused here, not at its first run."""
    value = value.strip()
    try:
        if rate_seconds(value) is None:
            croniter_expression(value)
    except ScheduleError as exc:
        raise ValueError(f"{value!r} is not an AWS schedule expression such as cron(0 6 * * ? *) or rate(1 day): "
                         f"{exc}") from None
    return value


ScheduleExpression = Annotated[str, AfterValidator(_schedule)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Company(Strict):
    name: str = Field(min_length=1)
    timezone: str
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. GBP")
    locale: str | None = Field(None, description="where the company writes its dates, e.g. en-GB (day first) or "
                                                 "en-US (month first): the order of 01/02/2024 in a source that "
                                                 "does not declare read.dayfirst")

    @field_validator("locale")
    @classmethod
    def _known_locale(cls, value: str | None) -> str | None:
        if value is not None:
            from babel import Locale, UnknownLocaleError

            try:
                Locale.parse(value, sep="-" if "-" in value else "_")
            except (UnknownLocaleError, ValueError):
                raise ValueError(f"unknown locale {value!r} (use a language and region such as en-GB)") from None
        return value

    @property
    def dayfirst(self) -> bool | None:
        """Whether the company's locale writes the day before the month (None: no locale, or year first)."""
        if self.locale is None:
            return None
        from babel import Locale

        pattern = Locale.parse(self.locale, sep="-" if "-" in self.locale else "_").date_formats["short"].pattern
        first = next((c for c in pattern if c in "dMy"), "y")
        return {"d": True, "M": False}.get(first)

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
        r"(?i)^(grand[ \t]+)?totals?([ \t]|:|$)",
        description="rows whose first non-empty cell (trimmed of white space) matches are footers, not data (a "
                    "regular expression that PostgreSQL and Python read alike: no \\b, \\d, \\s; use [0-9], "
                    "[ \\t], ([ \\t]|$))")
    encoding: Literal["utf-8", "utf-8-sig", "cp1252", "latin-1", "utf-16", "utf-16le", "utf-16be"] = Field(
        "utf-8", description="a file starting with a UTF-16 byte-order mark is UTF-16 whatever this says; utf-16 "
                             "needs that mark, utf-16le and utf-16be do not")
    delimiter: str = Field(",", min_length=1, max_length=1)
    quotechar: str = Field('"', min_length=1, max_length=1)
    decimal: Literal[".", ","] = "."
    thousands: Literal[",", ".", " ", "'", "_"] | None = None
    dayfirst: bool | None = Field(None, description="01/02/2024 is 1 February (true) or 2 January (false); unset, "
                                                    "the company's locale or the file's own dates must settle it")
    date_format: str | None = Field(None, description="strftime format of dates, e.g. %d/%m/%Y, or %d/%m/%y for "
                                                      "two-digit years (00-68 are 20xx, 69-99 are 19xx)")
    earliest_date: dt.date = Field(dt.date(1950, 1, 1), description="earlier dates are quarantined, not loaded")
    latest_date: dt.date = Field(dt.date(2099, 12, 31), description="later dates are quarantined, not loaded")
    chunk_rows: int = Field(100_000, ge=1_000, le=1_000_000)
    max_unpacked_mb: int = Field(400, ge=1, le=10_000, description=(
        "a workbook whose parts unpack to more is refused before it is read (Excel): a guard against zip bombs, "
        "not a memory budget (a 100,000-row sheet unpacks to about 40 MB)"))
    max_compression_ratio: int = Field(200, ge=10, le=100_000, description=(
        "a workbook part that inflates more than this many times is refused before it is read (Excel): "
        "exports compress 5 to 30 times, a zip bomb a thousand"))

    @field_validator("sheet_pattern", "skip_rows_matching")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @field_validator("date_format")
    @classmethod
    def _date_format(cls, value: str | None) -> str | None:
        if value is not None:
            fields = re.findall(r"%.", value)
            unknown = sorted(set(fields) - {"%d", "%m", "%Y", "%y", "%H", "%M", "%S"})
            if unknown:
                raise ValueError(f"{', '.join(unknown)} not supported: use %d, %m, %Y or %y, %H, %M, %S")
            if [fields.count("%d"), fields.count("%m"), fields.count("%Y") + fields.count("%y")] != [1, 1, 1]:
                raise ValueError(f"{value!r} needs %d, %m and one of %Y or %y, once each")
            # proved as the loader will read it: an example written in this format, read back by its rewrite
            from pipeline.typing_sql import TWO_DIGIT_YEAR, format_rewrite

            example = dt.datetime(2024, 1, 31, 13, 45, 30).strftime(value)
            regex, iso = format_rewrite(value)
            read = re.sub(regex, iso, example) if re.match(regex, example) else None
            for pattern, replacement in TWO_DIGIT_YEAR if read and "%y" in value else ():
                read = re.sub(pattern, replacement, read)
            if read != "2024-01-31":
                raise ValueError(f"{value!r} does not read its own example {example!r} as 2024-01-31: separate "
                                 "the day, month and year")
        return value

    @model_validator(mode="after")
    def _separators_differ(self) -> ReadOptions:
        if self.thousands is not None and self.thousands == self.decimal:
            raise ValueError("thousands and decimal separators must differ")
        if self.latest_date < self.earliest_date:
            raise ValueError("latest_date is before earliest_date")
        return self


class ApiResource(Strict):
    """What to fetch: a path under the base URL, fixed query parameters, where the records sit in the body."""

    path: str = Field(description="path under base_url, e.g. /v1/invoices")
    params: dict[str, str] = Field(default_factory=dict, description="query parameters sent with every request")
    records: str = Field("", description="dotted path to the list of records in the JSON body, e.g. data.items; "
                                         "empty when the body is the list itself; `[]` after a step expands a "
                                         "list of lists into rows, e.g. Invoices[].LineItems[] (one row per line, "
                                         "its invoice reached from columns as ^.InvoiceNumber)")

    @field_validator("records")
    @classmethod
    def _records_path(cls, value: str) -> str:
        steps = value.removesuffix("[]").split("[].") if "[]" in value else [value]
        # the first step may be empty: the body itself is the list ([].LineItems[])
        if "[]" in value and (not value.endswith("[]") or steps == [""] or any(
                not s or "[]" in s for s in steps[1:]) or "[]" in steps[0]):
            raise ValueError(f"{value!r}: write nested lists as Parent[].Child[] (each step a dotted path, each "
                             "followed by [])")
        if any(s.startswith(".") or s.endswith(".") for s in steps if s):
            raise ValueError(f"{value!r} is not a dotted path such as data.items")
        return value

    @field_validator("path")
    @classmethod
    def _relative_path(cls, value: str) -> str:
        if "://" in value or not value.startswith("/"):
            raise ValueError(f"{value!r} must be a path starting with '/', e.g. /v1/invoices")
        return value


# what each authentication type reads from its secret, in the order `playbook secret set` asks for it
SECRET_FIELDS = {"bearer": ("token",), "api_key_header": ("api_key",), "api_key_query": ("api_key",),
                 "basic": ("username", "password"), "oauth2_client_credentials": ("client_id", "client_secret"),
                 "oauth2_refresh_token": ("client_id", "client_secret", "refresh_token")}


class ApiAuth(Strict):
    """How requests authenticate. The credential lives in Secrets Manager, never here: `secret` is its name or ARN
    and the secret's JSON holds `token` (bearer), `api_key` (api_key_header, api_key_query), `username` and
    `password` (basic), `client_id` and `client_secret` (oauth2_client_credentials), or those and the current
    `refresh_token` (oauth2_refresh_token: the API gives a new one at every use, which is written back to the
    secret before the access token is used)."""

    type: Literal["bearer", "api_key_header", "api_key_query", "basic", "oauth2_client_credentials",
                  "oauth2_refresh_token", "none"]
    secret: str | None = Field(None, description="Secrets Manager secret name or ARN, e.g. playbook/api/business")
    header: str = Field("X-API-Key", description="header that carries the key (api_key_header)")
    param: str = Field("api_key", description="query parameter that carries the key (api_key_query)")
    token_url: str | None = Field(None, description="OAuth 2.0 token endpoint, e.g. https://identity.xero.com/"
                                                    "connect/token (oauth2_*)")
    scope: str | None = Field(None, description="scopes asked for, space-separated (oauth2_client_credentials)")
    client_auth: Literal["basic", "body"] = Field("basic", description="how the client id and secret go to the "
                                                                       "token endpoint: HTTP Basic or form fields")

    @model_validator(mode="after")
    def _secret_named(self) -> ApiAuth:
        if self.type != "none" and not self.secret:
            raise ValueError(f"secret: {self.type} authentication needs the Secrets Manager secret that holds it")
        if self.type == "none" and self.secret:
            raise ValueError("secret: authentication type none takes no secret")
        oauth = self.type.startswith("oauth2_")
        if oauth and not self.token_url:
            raise ValueError(f"token_url: {self.type} authentication needs the API's token endpoint")
        if not oauth and self.token_url:
            raise ValueError(f"token_url: only OAuth 2.0 authentication takes a token endpoint, not {self.type}")
        if self.token_url and not re.match(r"^https?://[^/\s?#]+(/[^\s#]*)?$", self.token_url):
            raise ValueError(f"token_url: {self.token_url!r} is not an http(s) URL")
        return self


class ApiPagination(Strict):
    """How to walk the pages of one window. Every style stops on an empty page; the others as described."""

    style: Literal["none", "page_number", "offset", "body_cursor", "link_header", "next_url"]
    page_size: int = Field(100, ge=1, le=10_000, description="records asked for per page")
    size_param: str | None = Field("page_size", description="query parameter for the page size "
                                                             "(page_number, body_cursor, link_header, next_url)")
    page_param: str = Field("page", description="page number parameter (page_number)")
    first_page: int = Field(1, ge=0, description="number of the first page (page_number)")
    total_pages_path: str | None = Field(None, description="dotted path of the page count in the body")
    total_count_path: str | None = Field(None, description="dotted path of the record count in the body")
    offset_param: str = Field("offset", description="offset parameter (offset)")
    limit_param: str = Field("limit", description="limit parameter (offset)")
    cursor_param: str = Field("cursor", description="parameter that sends the cursor back (body_cursor)")
    cursor_path: str = Field("next_cursor", description="dotted path of the next cursor in the body (body_cursor)")
    next_url_path: str = Field("next", description="dotted path of the next page's URL in the body (next_url)")
    stop_on_short_page: bool = Field(True, description="a page with fewer records than page_size is the last "
                                                       "(page_number, offset)")


class ApiIncremental(Strict):
    """The window each run asks for: records changed since `from` (and before `to`, when the API takes it), as
    query parameters (`from_param`, `to_param`), as templated parameters (`params`) or as a header (`header`)."""

    from_param: str | None = Field(None, description="e.g. updated_since, or from for a date window")
    to_param: str | None = Field(None, description="e.g. to; none for an updated-since API")
    format: Literal["date", "datetime"] = Field("datetime", description="date: YYYY-MM-DD; datetime: ISO 8601 UTC")
    params: dict[str, str] = Field(default_factory=dict, description=(
        "query parameters written from the window: {from:FORMAT} and {to:FORMAT} (strftime, in UTC) are the "
        "window's ends, e.g. where: 'UpdatedDateUTC>=DateTime({from:%Y,%m,%d})'; {from} alone is ISO 8601"))
    header: str | None = Field(None, description="a header that carries the window's start as an HTTP date, "
                                                 "e.g. If-Modified-Since")
    initial_from: str | None = Field(None, description="start of the very first window (ISO date or time); by "
                                                       "default one schedule period before the first run")

    @model_validator(mode="after")
    def _some_window(self) -> ApiIncremental:
        if not (self.from_param or self.params or self.header):
            raise ValueError("an incremental window needs from_param, params or header")
        for name, template in self.params.items():
            for field, fmt in re.findall(r"\{(\w+)(?::([^{}]*))?\}", template):
                if field not in ("from", "to"):
                    raise ValueError(f"params.{name}: {{{field}}} is not a window end; use {{from}} or {{to}}")
                if fmt and "%" not in fmt:
                    raise ValueError(f"params.{name}: {fmt!r} after {field}: is not a strftime format "
                                     "such as %Y-%m-%d")
        return self


API_DATE_FORMATS = ("iso", "ms_json", "epoch_s", "epoch_ms")


class ApiRateLimit(Strict):
    """Call limits the API announces in its response headers, respected across pages and invocations."""

    remaining_header: str = Field("X-Rate-Limit-Remaining", description="calls left in the current period")
    reset_header: str | None = Field("X-Rate-Limit-Reset", description="when the period ends")
    reset: Literal["seconds", "epoch", "http_date"] = Field("seconds", description="how reset_header is written: "
                                                            "seconds from now, epoch seconds or an HTTP date")
    keep: int = Field(0, ge=0, le=10_000, description="calls left untouched for other users of the API")
    max_wait_s: float = Field(120, ge=0, le=900, description="a longer wait for the limit stops the run instead")


class ApiRetry(Strict):
    attempts: int = Field(5, ge=1, le=20, description="tries per request on connection errors, timeouts, 429, 5xx")
    backoff_s: float = Field(0.5, gt=0, le=60, description="first wait; doubled each retry, with jitter")
    max_backoff_s: float = Field(30, gt=0, le=900)
    max_retry_after_s: float = Field(120, ge=0, le=900, description="a longer Retry-After fails the request")


class ApiOptions(Strict):
    """A business system's REST API as configuration: a new API is added here, not in code."""

    base_url: str = Field(description="e.g. https://api.example.com")
    resource: ApiResource
    auth: ApiAuth
    pagination: ApiPagination
    incremental: ApiIncremental | None = None
    headers: dict[str, str] = Field(default_factory=dict, description="extra request headers (no secrets)")
    timeout_s: float = Field(30, gt=0, le=300, description="per request (connect and read)")
    retry: ApiRetry = ApiRetry()
    max_pages: int = Field(1_000, ge=1, le=1_000_000, description="a window needing more pages fails")
    reserve_s: float = Field(30, ge=6, le=600, description="fetching stops when fewer seconds are left before the "
                                                           "function's timeout; the complete pages commit")
    formats: dict[str, str] = Field(default_factory=dict, description=(
        "how a column's dates or times are written: iso (ISO 8601, with or without an offset), ms_json "
        "(/Date(1539993600000+0000)/), epoch_s, epoch_ms, or a strftime pattern such as %d/%m/%Y; a value "
        "that does not fit is quarantined"))
    rate_limit: ApiRateLimit | None = None
    history_from: dt.date | None = Field(None, description=(
        "the first day of the company's data in this system: `playbook backfill` reads the API from there "
        "(default: three years back)"))

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, value: dict[str, str]) -> dict[str, str]:
        for column, fmt in value.items():
            if fmt not in API_DATE_FORMATS and "%" not in fmt:
                raise ValueError(f"{column}: {fmt!r} is not a date format; use {', '.join(API_DATE_FORMATS)} or a "
                                 "strftime pattern such as %d/%m/%Y")
        return value

    @field_validator("base_url")
    @classmethod
    def _url_shape(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s?#]+(/[^\s?#]*)?$", value):
            raise ValueError(f"{value!r} is not an http(s) base URL such as https://api.example.com")
        return value.rstrip("/")

    @field_validator("headers")
    @classmethod
    def _no_credentials(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if name.lower() in ("authorization", "proxy-authorization", "x-api-key", "cookie"):
                raise ValueError(f"{name}: credentials belong in auth.secret (Secrets Manager), not in headers")
        return value


class Attribute(Strict):
    """A further column of the source kept on each row (region, channel...), typed."""

    column: str = Field(description="its header in the source")
    type: Literal["text", "integer", "number", "date"] = "text"


# the source's own columns a debit/credit statement maps besides the table's: amount = credit - debit
DEBIT_CREDIT = ("debit", "credit")


class SourceConfig(Strict):
    kind: str = Field(description="how its deliveries arrive and are read: a name in pipeline.sources.kinds")
    table: str = Field(description="canonical table the source feeds")
    description: str = ""
    prefix: str | None = Field(None, description="landing bucket prefix of the files, e.g. landing/payments/")
    schedule: ScheduleExpression = Field(description="AWS schedule expression: cron(...) or rate(...)")
    columns: dict[str, str] = Field(description="canonical column -> header in the source (with amounts: "
                                                "debit_credit, debit and credit -> their headers)")
    natural_key: list[str] | None = Field(None, description="the columns a row is known by (default: the table's "
                                                            "own key); [row] in a snapshot: each row's place")
    compose: dict[str, str] = Field(default_factory=dict, description="canonical column -> its value built from "
                                    "the source's columns, e.g. order_id: '{Country}-{Segment}-{Month}'")
    amounts: Literal["positive", "signed", "inverted", "debit_credit"] = Field(
        "positive", description="positive: a negative amount is refused; signed: negative amounts are refunds or "
                                "outflows; inverted: the source writes money in as negative; debit_credit: "
                                "amount = credit - debit, from columns.debit and columns.credit")
    currency: str | None = Field(None, pattern=r"^[A-Z]{3}$", description="the currency of rows that name none "
                                                                         "(default: the company's)")
    attributes: dict[str, str | Attribute] = Field(default_factory=dict, description="further columns kept on "
                                                   "each row by name: region: Region, or region: {column: Region}")
    load: Literal["merge", "distinct", "snapshot"] = Field(
        "merge", description="merge: rows merged by key; distinct: a dimension taken from fact rows (each key "
                             "once, the last row wins); snapshot: each delivery replaces the source's rows for "
                             "the dates it covers, and rows it no longer holds are deleted at source")
    read: ReadOptions = ReadOptions()
    expected_every_days: int | None = Field(None, ge=1, description="a delivery is due this often")
    start_date: dt.datetime | None = Field(
        None, description="when the schedule's cycle starts, e.g. 2025-01-06T06:00 (the company's time when it has "
                          "no offset): a rate of more than a day counts from it in the template (StartDate), the "
                          "local scheduler and the freshness check alike")
    api: ApiOptions | None = Field(None, description="how to call the API (rest_api sources only)")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        source_kind(value)
        return value

    @field_validator("table")
    @classmethod
    def _known_table(cls, value: str) -> str:
        if value not in TABLES:
            raise ValueError(f"unknown table {value!r}; choose one of {', '.join(TABLES)}")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix_shape(cls, value: str | None) -> str | None:
        if value is not None and (not value.endswith("/") or value.startswith("/") or ".." in value):
            raise ValueError(f"{value!r} must be a relative key prefix ending in '/', e.g. landing/sales/")
        if value is not None and value.startswith((API_PAGES_PREFIX, DRY_RUN_PREFIX)):
            raise ValueError(f"{value!r} lies in {value.split('/')[0]}/, which the pipeline keeps for itself "
                             "(API pages, dry runs): choose a prefix such as landing/sales/")
        return value

    @model_validator(mode="after")
    def _a_long_rate_has_a_start(self) -> SourceConfig:
        step = rate_seconds(self.schedule)
        if step and step > 86_400 and self.start_date is None:
            raise ValueError(f"start_date: {self.schedule} needs the day its cycle counts from, e.g. start_date: "
                             "2025-01-06T06:00 (else AWS counts from the schedule's creation)")
        return self

    def starts(self, timezone: str) -> dt.datetime | None:
        """start_date as an instant: without an offset it is the company's wall time."""
        return local_time(self.start_date, timezone) if self.start_date else None

    @model_validator(mode="after")
    def _mapping_fits_the_table(self) -> SourceConfig:
        table = TABLES[self.table]
        extra = set(DEBIT_CREDIT) if self.amounts == "debit_credit" else set()
        unknown = sorted(set(self.columns) - set(table.column_names) - extra)
        if unknown:
            raise ValueError(f"columns: {', '.join(unknown)} not in table {self.table} "
                             f"(its columns: {', '.join(table.column_names)})")
        unknown = sorted(set(self.compose) - set(table.column_names))
        if unknown:
            raise ValueError(f"compose: {', '.join(unknown)} not in table {self.table}")
        both = sorted(set(self.compose) & set(self.columns))
        if both:
            raise ValueError(f"compose: {', '.join(both)} is mapped in columns too: map it once")
        if self.amounts == "debit_credit":
            if table.amount is None or table.amount in self.columns:
                raise ValueError(f"columns: with amounts: debit_credit, {self.table}'s amount comes from "
                                 "columns.debit and columns.credit, not a column of its own")
            if not extra <= set(self.columns):
                raise ValueError("columns: amounts: debit_credit needs columns.debit and columns.credit")
        elif self.amounts != "positive" and table.amount is None:
            raise ValueError(f"amounts: {self.table} holds no amount")
        if self.currency and "currency" not in table.column_names:  # tax is the company's; the rest hold no money
            raise ValueError(f"currency: {self.table} rows have no currency of their own (they are in the "
                             "company's, company.currency)")
        mapped = self.mapped
        missing = [c.name for c in table.columns if c.required and c.name not in mapped]
        if missing:
            raise ValueError(f"columns: required column(s) {', '.join(missing)} of {self.table} are not mapped")
        if self.natural_key is None and not set(table.natural_key) <= mapped:
            raise ValueError(f"natural_key: {self.table}'s own key ({', '.join(table.natural_key)}) is not mapped: "
                             "declare the columns its rows are known by")
        for key in self.key:
            if key == ROW_KEY:
                if self.load != "snapshot" or len(self.key) > 1:
                    raise ValueError("natural_key: [row] (each row's place) is a key of a snapshot source only, "
                                     "on its own")
            elif key not in mapped:
                raise ValueError(f"natural_key: {key!r} is not a mapped column")
            elif table.column(key).type not in KEY_TYPES:
                raise ValueError(f"natural_key: {key!r} is {table.column(key).type}: a key is made of text, "
                                 "integer and date columns")
        clash = sorted(set(self.attributes) & (set(table.column_names) | {"attributes"}))
        if clash or any(not _NAME.match(a) for a in self.attributes):
            raise ValueError(f"attributes: {', '.join(clash or self.attributes)}: an attribute is named in lower "
                             "case letters, digits and _, and is not a column of the table")
        if self.delivers == "files" and not self.prefix:
            raise ValueError(f"prefix: a {self.kind} source needs the landing prefix its files arrive under")
        if self.delivers == "api" and self.api is None:
            raise ValueError(f"api: a {self.kind} source needs its api options (base_url, resource, auth, pagination)")
        if self.api is not None and (unknown := sorted(set(self.api.formats) - set(self.columns)
                                                       - set(self.attributes))):
            raise ValueError(f"api.formats: {', '.join(unknown)} is not a mapped column or attribute of this source")
        if self.delivers == "api" and self.load == "snapshot":  # a window, cut short or incremental, is no snapshot
            raise ValueError("load: an API source delivers windows (cut short by time, or only what changed), never "
                             "its whole truth for their dates: use merge")
        if self.delivers != "api" and self.api is not None:
            api_kinds = " or ".join(k.name for k in KINDS.values() if k.delivers == "api")
            raise ValueError(f"api: only a {api_kinds} source takes api options, not a {self.kind} source")
        return self

    @property
    def delivers(self) -> str:
        """How its deliveries arrive: "files" under its landing prefix, or "api" windows."""
        return source_kind(self.kind).delivers

    @property
    def key(self) -> tuple[str, ...]:
        return tuple(self.natural_key or TABLES[self.table].natural_key)

    @property
    def mapped(self) -> set[str]:
        """The table's columns this source gives: mapped, composed, or its amount from debit and credit."""
        extra = {TABLES[self.table].amount} if self.amounts == "debit_credit" else set()
        return (set(self.columns) - set(DEBIT_CREDIT)) | set(self.compose) | extra

    @property
    def attribute_columns(self) -> dict[str, Attribute]:
        """Each attribute's column and type."""
        return {name: a if isinstance(a, Attribute) else Attribute(column=a) for name, a in self.attributes.items()}


class EmailReport(Strict):
    sender: str
    recipients: list[str] = Field(min_length=1)
    period: Literal["day", "week", "month"] = "day"
    schedule: ScheduleExpression = "cron(0 8 * * ? *)"

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
    forecast_days: int = Field(28, ge=7, le=91, description="days the activity chart forecasts after the last day "
                                                          "with data (playbook.reports.forecast)")
    schedule: ScheduleExpression = "cron(30 7 * * ? *)"
    email: EmailReport


class Accuracy(Strict):
    """What the validation stage tolerates before it stops the run: each limit is a count of findings."""

    max_unreconciled_batches: int = Field(0, ge=0, description="batches whose rows or money in and out differ")
    max_mart_differences: int = Field(0, ge=0, description="mart rows that differ from core")
    max_orphans: int = Field(0, ge=0, description="rows naming a client not in core.clients")
    max_duplicate_rows: int = Field(0, ge=0, description="exact copies of a row inside one delivery")
    max_duplicate_batches: int = Field(0, ge=0, description="deliveries that repeat content already loaded")
    max_changed_rows: int = Field(0, ge=0, description="rows changed after their first load")
    max_quarantined_rows: int = Field(0, ge=0, description="rows rejected into meta.quarantine")
    max_missed_deliveries: int = Field(0, ge=0, description="scheduled deliveries the data shows never arrived")
    max_failed_batches: int = Field(0, ge=0, description="deliveries or API windows whose load failed and that "
                                                         "no later batch loaded")
    freshness_grace_days: int = Field(1, ge=0, description="days of data a source may miss before it is late")
    footer_sources: list[str] = Field(default_factory=list,
                                      description="sources whose files end in a totals row by design")
    snapshot_tables: list[str] = Field(["clients"], description="tables sent whole each time (master data): "
                                       "their dates are not delivery periods, so freshness is not read from them")
    max_reread_differences: int = Field(0, ge=0, description="committed batches whose delivered object, read again "
                                                             "independently, disagrees with the ledger")
    reread_max_bytes: int = Field(64 * 1024 * 1024, ge=0, description="objects larger than this are not read "
                                                                     "again (the report names them)")
    reread_budget_s: float = Field(300, ge=0, description="seconds spent reading objects again; the objects left "
                                                          "when it is spent are named in the report")
    max_outliers: int = Field(0, ge=0, description="sales lines far from their product's or client's others "
                                                   "(a warning: an outlier may be a real order)")
    outlier_robust_z: Decimal = Field(Decimal(10), ge=3, description="robust deviations (1.4826 x MAD) from the "
                                                                     "median a value must lie beyond")
    outlier_ratio: Decimal = Field(Decimal(50), ge=2, description="and how many times the median (or its "
                                                                  "reciprocal) it must reach: a typo of two "
                                                                  "zeros or more, not a large order")
    outlier_min_rows: int = Field(8, ge=8, description="rows a product or client needs before its values are judged")


class PipelineConfig(Strict):
    company: Company
    sources: dict[str, SourceConfig] = Field(min_length=1)
    reports: Reports
    accuracy: Accuracy = Accuracy()

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
