"""A business system's REST API, read page by page into one raw sheet for the loader.

Everything about the API is configuration (`ApiOptions`): the resource and where its records sit in the
body, authentication (the credential from Secrets Manager), the pagination style, the incremental window.
Values stay exact text: JSON numbers are parsed as Decimal and written back as written, so money is never
float-rounded. A fault that could load a wrong or partial picture (a body that is not JSON, an HTML page, a
cursor or page that repeats, more pages than the guard allows) is a LoadError and nothing is committed.
Fetching stops early only at a page boundary, when the time budget says so; the caller commits the complete
pages and keeps `next_position` to resume from.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from functools import lru_cache
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import boto3
import requests
from botocore.exceptions import BotoCoreError, ClientError
from psycopg2 import sql

from pipeline.config import ApiOptions
from pipeline.sources import LoadError, RawSheet, copy_csv, in_pieces, map_header
from pipeline.sources.s3_csv import raw_columns

_MISSING = object()
_SECRET_FIELDS = {"bearer": ("token",), "api_key_header": ("api_key",), "api_key_query": ("api_key",),
                  "basic": ("username", "password")}
_HINTS = {401: "check the credential in auth.secret", 403: "the credential may not read this resource",
          404: "check base_url and resource.path"}


class OutOfTime(Exception):
    """The next wait or request would eat into the time kept for committing."""


def get_path(obj: object, path: str) -> object:
    """A dotted path into parsed JSON ("data.items", "customer.code", "lines.0.sku"); _MISSING when absent."""
    if not path:
        return obj
    if isinstance(obj, dict) and path in obj:
        return obj[path]
    for part in path.split("."):
        if isinstance(obj, dict) and part in obj:
            obj = obj[part]
        elif isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        else:
            return _MISSING
    return obj


def json_text(value: object) -> str:
    """A JSON value as the loader's raw text: numbers exactly as written, null and absent as empty."""
    if value is None or value is _MISSING:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, int | str):
        return str(value)
    return json.dumps(value, default=str, sort_keys=True)  # an object where a value belongs: typing rejects it


@lru_cache(maxsize=16)
def _secret(secret_id: str) -> dict:
    try:
        value = boto3.client("secretsmanager").get_secret_value(SecretId=secret_id)["SecretString"]
    except (ClientError, BotoCoreError) as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
        raise LoadError(f"auth.secret: cannot read the secret {secret_id!r} from Secrets Manager ({code})") from None
    try:
        data = json.loads(value)
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise LoadError(f"auth.secret: the secret {secret_id!r} is not a JSON object") from None
    return data


def credentials(options: ApiOptions) -> dict[str, str]:
    """The fields the auth type needs, from Secrets Manager; an error names the missing field, never a value."""
    auth = options.auth
    if auth.type == "none":
        return {}
    data = _secret(auth.secret)
    missing = [f for f in _SECRET_FIELDS[auth.type] if not data.get(f)]
    if missing:
        raise LoadError(f"auth.secret: the secret {auth.secret!r} has no {' or '.join(missing)} field, which "
                        f"{auth.type} authentication needs")
    return {f: str(data[f]) for f in _SECRET_FIELDS[auth.type]}


def without_param(url: str, name: str | None) -> str:
    """The URL without one query parameter (the API key never goes into a log, a ref or the saved state)."""
    if not name:
        return url
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != name]
    return urlunsplit(parts._replace(query=urlencode(query)))


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


def window_value(moment: datetime, fmt: str) -> str:
    return moment.date().isoformat() if fmt == "date" else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiClient:
    """GET with retries: exponential backoff with jitter on connection errors, timeouts, 429 and 5xx."""

    def __init__(self, options: ApiOptions, remaining: Callable[[], float],
                 sleep: Callable[[float], None] = time.sleep):
        self.options, self.remaining, self.sleep = options, remaining, sleep
        self.session = requests.Session()
        self.session.headers.update({"Accept": "application/json", **options.headers})
        self._query: dict[str, str] = {}
        creds = credentials(options)
        auth = options.auth
        if auth.type == "bearer":
            self.session.headers["Authorization"] = f"Bearer {creds['token']}"
        elif auth.type == "api_key_header":
            self.session.headers[auth.header] = creds["api_key"]
        elif auth.type == "api_key_query":
            self._query = {auth.param: creds["api_key"]}
        elif auth.type == "basic":
            self.session.auth = (creds["username"], creds["password"])
        self.hidden_param = auth.param if auth.type == "api_key_query" else None
        self.requests = 0
        self.retries = 0

    def shown(self, url: str) -> str:
        return without_param(url, self.hidden_param)

    def _backoff(self, attempt: int) -> float:
        r = self.options.retry
        return min(r.max_backoff_s, r.backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)  # noqa: S311

    def get_json(self, url: str, params: dict[str, str]) -> tuple[object, requests.Response]:
        retry = self.options.retry
        query = dict(params)
        if self._query and self.hidden_param not in dict(parse_qsl(urlsplit(url).query)):
            query.update(self._query)
        shown = self.shown(requests.Request("GET", url, params=query).prepare().url)
        for attempt in range(1, retry.attempts + 1):
            self.requests += 1
            try:
                response = self.session.get(url, params=query, timeout=self.options.timeout_s)
            except requests.Timeout:
                problem, wait = f"no answer within {self.options.timeout_s:g} s (timed out)", self._backoff(attempt)
            except requests.ConnectionError as exc:
                problem, wait = f"connection failed ({type(exc).__name__})", self._backoff(attempt)
            else:
                status = response.status_code
                if status == 429 or status >= 500:
                    problem = f"HTTP {status} {response.reason}"
                    after = retry_after_seconds(response.headers.get("Retry-After"))
                    if after is not None and after > retry.max_retry_after_s:
                        raise LoadError(f"GET {shown}: HTTP {status} asks to wait {after:.0f} s, longer than "
                                        f"api.retry.max_retry_after_s ({retry.max_retry_after_s:g} s)")
                    wait = after if after is not None else self._backoff(attempt)
                elif status >= 400:
                    hint = _HINTS.get(status, "a client error: the request itself is wrong")
                    raise LoadError(f"GET {shown}: HTTP {status} {response.reason}; not retried ({hint})")
                else:
                    return self._parse(response, shown), response
            if attempt == retry.attempts:
                raise LoadError(f"GET {shown}: {problem}; gave up after {retry.attempts} attempts")
            if self.remaining() - wait < self.options.reserve_s:
                raise OutOfTime(f"GET {shown}: {problem}; no time left to wait {wait:.1f} s")
            self.retries += 1
            self.sleep(wait)
        raise AssertionError("unreachable")

    @staticmethod
    def _parse(response: requests.Response, shown: str) -> object:
        body = response.content
        content_type = response.headers.get("Content-Type", "")
        if "html" in content_type.lower() or body.lstrip()[:1] == b"<":
            raise LoadError(f"GET {shown}: HTTP {response.status_code} with an HTML page ({content_type or 'no type'}) "
                            "instead of JSON: a login, maintenance or error page, not data")
        try:
            return json.loads(body.decode("utf-8-sig"), parse_float=Decimal)
        except UnicodeDecodeError as exc:
            raise LoadError(f"GET {shown}: the body is not UTF-8 text ({exc.reason})") from None
        except json.JSONDecodeError as exc:
            raise LoadError(f"GET {shown}: the body is not valid JSON ({exc.msg}: line {exc.lineno} column "
                            f"{exc.colno}, {len(body)} bytes): truncated or not JSON") from None


class ApiReader:
    """One window of one resource: `fetch()` walks the pages, `sheets()` gives the loader one raw sheet."""

    # a window's records merge with the rows earlier windows loaded: never straight into an empty table, never
    # a re-export of one batch
    one_sheet = False

    def __init__(self, source: str, options: ApiOptions, columns: dict[str, str], required: set[str],
                 window: tuple[datetime | None, datetime | None], resume: dict | None = None,
                 remaining: Callable[[], float] | None = None, client: ApiClient | None = None):
        self.source, self.options, self.columns, self.required = source, options, columns, required
        self.window = window
        self.resume = resume or {}
        self.remaining = remaining or (lambda: float("inf"))
        self._client = client  # made on the first fetch: reading the secret can fail like any request
        self.header = list(dict.fromkeys(columns.values()))
        self.rows: list[list[str]] = []
        self.pages_before = int(self.resume.get("pages", 0))
        self.records_before = int(self.resume.get("records", 0))
        self.pages = 0
        self.next_position: dict | None = None
        self.last_page_sha: str | None = self.resume.get("last_page_sha")
        self.stopped_for_time = False
        self.fetched = False

    @property
    def client(self) -> ApiClient:
        if self._client is None:
            self._client = ApiClient(self.options, self.remaining)
        return self._client

    # -- where and what -----------------------------------------------------------------------------
    @property
    def resource_url(self) -> str:
        return self.options.base_url + self.options.resource.path

    def _base_params(self) -> dict[str, str]:
        params = dict(self.options.resource.params)
        inc, (start, end) = self.options.incremental, self.window
        if inc:
            if start is not None:
                params[inc.from_param] = window_value(start, inc.format)
            if inc.to_param and end is not None:
                params[inc.to_param] = window_value(end, inc.format)
        return params

    @property
    def ref(self) -> str:
        """The API URL and window: what the ledger and every row's _source_ref name."""
        params = self._base_params()
        return self.resource_url + (f"?{urlencode(params)}" if params else "")

    @property
    def display(self) -> str:
        start, end = self.window
        span = f" [{start.isoformat() if start else '...'} .. {end.isoformat() if end else '...'})"
        return f"{self.source}: {self.ref}{span if self.options.incremental else ''}"

    def _first_position(self) -> dict:
        style = self.options.pagination.style
        return {"page_number": {"page": self.options.pagination.first_page}, "offset": {"offset": 0},
                "body_cursor": {"cursor": None}, "link_header": {"url": None}, "next_url": {"url": None}}.get(
            style, {})

    def _request(self, position: dict) -> tuple[str, dict[str, str]]:
        p = self.options.pagination
        if position.get("url"):
            return position["url"], {}
        params = self._base_params()
        if p.style == "offset":
            params[p.offset_param], params[p.limit_param] = str(position["offset"]), str(p.page_size)
        elif p.style != "none" and p.size_param:
            params[p.size_param] = str(p.page_size)
        if p.style == "page_number":
            params[p.page_param] = str(position["page"])
        elif p.style == "body_cursor" and position.get("cursor"):
            params[p.cursor_param] = str(position["cursor"])
        return self.resource_url, params

    # -- the walk -----------------------------------------------------------------------------------
    def fetch(self) -> None:
        position: dict | None = dict(self.resume["position"]) if self.resume.get("position") else self._first_position()
        seen: set[str] = set()
        while position is not None:
            if self.remaining() < self.options.reserve_s:
                self.stopped_for_time = True
                break
            done = self.pages_before + self.pages
            if done >= self.options.max_pages:
                raise LoadError(f"{self.display}: more than {self.options.max_pages} pages (api.max_pages) and the "
                                "API still offers another; narrow the window or raise the guard")
            url, params = self._request(position)
            try:
                body, response = self.client.get_json(url, params)
            except OutOfTime:
                self.stopped_for_time = True
                break
            shown = self.client.shown(response.url)
            seen.add(shown)
            if position.get("cursor"):
                seen.add(f"cursor:{position['cursor']}")
            records = self._records(body, shown)
            sha = hashlib.sha256(json.dumps(records, sort_keys=True, default=str).encode()).hexdigest()
            if records and sha == self.last_page_sha:
                raise LoadError(f"GET {shown}: page {done + 1} holds exactly the records of the page before; "
                                "the API is not advancing (a page or cursor parameter ignored?)")
            self.last_page_sha = sha
            self.rows.extend([json_text(get_path(r, f)) for f in self.header] for r in records)
            self.pages += 1
            position = self._next(position, body, response, len(records), seen, shown)
        self.next_position = position
        self.fetched = True

    def _next(self, position: dict, body: object, response: requests.Response, n: int, seen: set[str],
              shown: str) -> dict | None:
        p = self.options.pagination
        if p.style == "none" or n == 0:
            return None
        total_records = self.records_before + len(self.rows)
        if p.style in ("page_number", "offset"):
            if p.total_count_path:
                total = get_path(body, p.total_count_path)
                if isinstance(total, int | Decimal) and total_records >= total:
                    return None
            if p.style == "page_number" and p.total_pages_path:
                pages = get_path(body, p.total_pages_path)
                if isinstance(pages, int | Decimal) and position["page"] - p.first_page + 1 >= pages:
                    return None
            if p.stop_on_short_page and n < p.page_size:
                return None
            if p.style == "page_number":
                return {"page": position["page"] + 1}
            return {"offset": position["offset"] + n}
        if p.style == "body_cursor":
            cursor = get_path(body, p.cursor_path)
            if cursor in (None, "", _MISSING):
                return None
            if f"cursor:{cursor}" in seen:
                raise LoadError(f"GET {shown}: the next cursor {str(cursor)[:40]!r} was already followed; "
                                "the API is going round in circles")
            return {"cursor": json_text(cursor)}
        if p.style == "link_header":
            nxt = response.links.get("next", {}).get("url")
        else:
            nxt = get_path(body, p.next_url_path)
            nxt = None if nxt is _MISSING or nxt == "" else nxt
        if nxt is None:
            return None
        nxt = self.client.shown(urljoin(response.url, str(nxt)))
        if nxt in seen:
            raise LoadError(f"GET {shown}: the next page's URL {nxt} was already fetched; "
                            "the API is going round in circles")
        return {"url": nxt}

    def _records(self, body: object, shown: str) -> list[dict]:
        path = self.options.resource.records
        records = get_path(body, path)
        if not isinstance(records, list):
            found = ", ".join(repr(k) for k in body) if isinstance(body, dict) else type(body).__name__
            raise LoadError(f"GET {shown}: no list of records at {path or '(the body)'!r} (resource.records); "
                            f"the body has {found}")
        for i, record in enumerate(records):
            if not isinstance(record, dict):
                raise LoadError(f"GET {shown}: record {i + 1} at {path or '(the body)'!r} is a "
                                f"{type(record).__name__}, not an object")
        return records

    # -- resume -------------------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return self.fetched and self.next_position is None

    def pending(self) -> dict | None:
        """Where the next invocation resumes this window, or None when the window is complete."""
        if self.complete:
            return None
        start, end = self.window
        return {"from": start.isoformat() if start else None, "to": end.isoformat() if end else None,
                "position": self.next_position, "pages": self.pages_before + self.pages,
                "records": self.records_before + len(self.rows), "last_page_sha": self.last_page_sha}

    # -- the loader's side --------------------------------------------------------------------------
    def sheets(self) -> Iterator[RawSheet]:
        if not self.fetched:
            self.fetch()
        where = f"{self.display}: columns"
        mapping = map_header(self.header, self.columns, where, self.required)
        first_row = self.records_before + 1
        name = (f"pages {self.pages_before + 1}-{self.pages_before + self.pages}" if self.pages else None)
        rows, width = self.rows, len(self.header)

        def copy_rows(cur, target: str) -> None:
            statement = sql.SQL("copy {} (_sheet, _row, {}) from stdin with (format csv)").format(
                sql.Identifier(target), raw_columns(width)).as_string(cur)
            copy_csv(cur, statement, in_pieces([name, first_row + i, *row] for i, row in enumerate(rows)))

        yield RawSheet(name, self.header, mapping, first_row, copy_rows)
