"""The demo company's business system as a REST API: its order lines and operating costs over HTTP.

A real HTTP server (the standard library's ThreadingHTTPServer) on 127.0.0.1, serving the same company
the file generator draws. It offers every pagination style a real API uses, chosen with `paging=`:

    GET /v1/orders?updated_since=&updated_before=&paging=page&page=&page_size=   (meta.total_pages, total_count)
    GET /v1/costs?from=&to=&paging=offset&offset=&limit=                          (meta.total_count)
        paging=cursor (cursor=, meta.next_cursor), link (Link: <...>; rel="next"), next (links.next), none

Money is written as exact decimals (12.30, never 12.3 or 12.299999). Requests authenticate with the token
as a Bearer token, an X-API-Key header, an api_key query parameter or Basic (user `playbook`); anything
else is a 401. Faults can be switched on for tests and demos (see FAULTS).

It also plays an accounting system the way Xero serves one:

    POST /oauth/token        OAuth 2.0: grant_type=client_credentials (client `playbook-client`, the token as
                             its secret) or grant_type=refresh_token; every refresh token works once and its
                             use gives a new one (a reused or revoked one is invalid_grant)
    GET /v2/Invoices?page=&where=UpdatedDateUTC>=DateTime(2024,01,01)&&UpdatedDateUTC<DateTime(...)
                             (or If-Modified-Since): {"Invoices": [{..., "LineItems": [...]}]}, 100 invoices a
                             page, dates as /Date(ms+0000)/, the Xero-Tenant-Id header required; with
                             rate_limit=(calls, period_s) every answer says X-Rate-Limit-Remaining and
                             X-Rate-Limit-Reset (seconds), and a call over the limit is a 429 with Retry-After
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hmac
import json
import math
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import format_datetime, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import pandas as pd

from playbook.demo.company import DEFAULT_END, DEFAULT_SEED, Company, build_company

FAULTS = {
    "rate_limit": "the first requests get 429 with Retry-After (in seconds, then as an HTTP date)",
    "server_error": "the first requests get 500, then the API recovers",
    "slow": "every answer takes longer than a client's timeout (slow_s)",
    "truncated": "from the second page on, bodies are cut short (invalid JSON)",
    "html": "status 200 with an HTML maintenance page instead of JSON",
    "repeat_cursor": "paging never advances: the same cursor, next URL or page comes back",
    "runaway": "paging never ends: every page is full and points to another",
    "bad_date": "the first invoice of every page has its Date as ISO text instead of /Date(...)/",
}
BASIC_USER = "playbook"
CLIENT_ID = "playbook-client"
TENANT_ID = "0d2e6b0c-northwind"
INVOICE_PAGE = 100
MAX_PAGE_SIZE = 1000


@dataclass
class Resource:
    """One collection: records pre-serialized, sorted by the key its window filters on."""

    keys: list[str]
    bodies: list[str]
    id_field: str


def _money(pence: int) -> str:
    return f"{'-' if pence < 0 else ''}{abs(pence) // 100}.{abs(pence) % 100:02d}"


def _obj(pairs: list[tuple[str, str]]) -> str:
    """A JSON object from (name, already-encoded value) pairs, so money keeps its exact text."""
    return "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in pairs) + "}"


def _orders(company: Company) -> Resource:
    s = company.sales
    names = dict(zip(company.clients["client_id"], company.clients["name"], strict=True))
    rows = []
    for order_no, line_no, day, client, product, qty, price, amount in zip(
            s["order_no"], s["line_no"], s["order_date"].to_numpy().astype("datetime64[D]").astype(str), s["client_id"],
            s["product"], s["quantity"], s["unit_price"], s["amount"], strict=True):
        updated = f"{day}T17:00:00Z"
        rows.append((updated, f"SO-{int(order_no):07d}", int(line_no), _obj([
            ("order_id", json.dumps(f"SO-{int(order_no):07d}")), ("line", str(int(line_no))),
            ("order_date", json.dumps(day)),
            ("customer", _obj([("code", json.dumps(client)), ("name", json.dumps(names[client]))])),
            ("product", json.dumps(product)), ("quantity", str(int(qty))), ("unit_price", _money(int(price))),
            ("line_total", _money(int(amount))), ("currency", '"GBP"'), ("updated_at", json.dumps(updated))])))
    rows.sort(key=lambda r: r[:3])
    return Resource([r[0] for r in rows], [r[3] for r in rows], "order_id")


def _ms_json(moment: datetime) -> str:
    return f"/Date({int(moment.timestamp() * 1000)}+0000)/"


def _invoices(s: pd.DataFrame) -> tuple[list[float], list[str]]:
    """Order lines as invoices with their lines, Xero's way: (updated epoch seconds, JSON) by update time."""
    orders: dict[int, dict] = {}
    for order_no, line_no, day, client, product, qty, price, amount in zip(
            s["order_no"], s["line_no"], s["order_date"].to_numpy().astype("datetime64[D]").astype(str), s["client_id"],
            s["product"], s["quantity"], s["unit_price"], s["amount"], strict=True):
        order = orders.setdefault(int(order_no), {"day": day, "client": client, "lines": []})
        order["lines"].append((int(line_no), _obj([
            ("LineItemID", json.dumps(f"li-{int(order_no)}-{int(line_no)}")), ("ItemCode", json.dumps(product)),
            ("Description", json.dumps(product)), ("Quantity", str(int(qty))), ("UnitAmount", _money(int(price))),
            ("LineAmount", _money(int(amount)))])))
    rows = []
    for order_no, order in orders.items():
        midnight = datetime.fromisoformat(order["day"]).replace(tzinfo=UTC)
        updated = midnight.replace(hour=17)
        lines = [text for _, text in sorted(order["lines"])]
        rows.append((updated.timestamp(), order_no, _obj([
            ("InvoiceID", json.dumps(f"inv-{order_no}")), ("Type", '"ACCREC"'),
            ("InvoiceNumber", json.dumps(f"SO-{order_no:07d}")),
            ("Contact", _obj([("ContactNumber", json.dumps(order["client"]))])),
            ("Date", json.dumps(_ms_json(midnight))),
            ("DateString", json.dumps(midnight.strftime("%Y-%m-%dT%H:%M:%S"))),
            ("CurrencyCode", '"GBP"'), ("LineItems", "[" + ", ".join(lines) + "]"),
            ("UpdatedDateUTC", json.dumps(_ms_json(updated)))])))
    rows.sort(key=lambda r: r[:2])
    return [r[0] for r in rows], [r[2] for r in rows]


_WHERE = re.compile(r"UpdatedDateUTC\s*(>=|<)\s*DateTime\((\d{4}),\s*(\d{1,2}),\s*(\d{1,2})\)")


def _costs(company: Company) -> Resource:
    c = company.costs
    rows = []
    for cost_no, day, category, vendor, amount in zip(
            c["cost_no"], c["cost_date"].to_numpy().astype("datetime64[D]").astype(str), c["category"], c["vendor"],
            c["amount"], strict=True):
        rows.append((day, int(cost_no), _obj([
            ("id", json.dumps(f"EX-{int(cost_no):06d}")), ("date", json.dumps(day)),
            ("category", json.dumps(category)), ("supplier", _obj([("name", json.dumps(vendor))])),
            ("amount", _money(int(amount))), ("currency", '"GBP"')])))
    rows.sort(key=lambda r: r[:2])
    return Resource([r[0] for r in rows], [r[2] for r in rows], "id")


def _moment(text: str, as_date: bool) -> str:
    """A window bound in the form the resource's keys are written in (ISO date, or UTC date-time)."""
    if len(text) == 10:
        day = date.fromisoformat(text)
        return day.isoformat() if as_date else f"{day.isoformat()}T00:00:00Z"
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.date().isoformat() if as_date else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Faults:
    active: dict[str, int | None] = field(default_factory=dict)  # name -> times left (None: always)
    slow_s: float = 2.0
    retry_after_s: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, name: str) -> bool:
        """True when the fault applies to this request (and count it)."""
        with self.lock:
            if name not in self.active:
                return False
            left = self.active[name]
            if left is None:
                return True
            if left <= 0:
                return False
            self.active[name] = left - 1
            return True


class BusinessApi:
    """The sample business API on 127.0.0.1; port 0 picks a free port. Use as a context manager or start/stop.
    `invoices`: the order lines /v2/Invoices serves (default: every sale, returns aside)."""

    def __init__(self, company: Company | None = None, *, token: str | None = None, host: str = "127.0.0.1",
                 port: int = 0, faults: dict[str, int | None] | None = None, slow_s: float = 2.0,
                 retry_after_s: int = 1, quiet: bool = True, invoices: pd.DataFrame | None = None):
        company = company or build_company(DEFAULT_SEED, DEFAULT_END)
        self.resources = {"/v1/orders": (_orders(company), ("updated_since", "updated_before"), False),
                          "/v1/costs": (_costs(company), ("from", "to"), True)}
        self.invoices = _invoices(company.sales if invoices is None else invoices)
        self.token = token or secrets.token_urlsafe(24)
        self.faults = Faults(dict(faults or {}), slow_s, retry_after_s)
        # OAuth 2.0: the refresh token that works now, those spent (each use logged), live access tokens
        self.oauth_lock = threading.Lock()
        self.refresh_token = secrets.token_urlsafe(24)
        self.spent_refresh_tokens: list[str] = []
        self.access_tokens: dict[str, float] = {}  # token -> expires at (epoch seconds)
        self.token_ttl_s = 1800
        self.token_delay_s = 0.0  # how long a refresh takes: two at once overlap
        self.grants: list[tuple[str, int]] = []  # (grant type, status) of every token request
        self.rate_limit: tuple[int, float] | None = None  # (calls, period seconds) on /v2/
        self._calls: list[float] = []
        self.log: list[tuple[str, int]] = []  # (path with query, status) of every request answered
        self.quiet = quiet
        self._http = ThreadingHTTPServer((host, port), self._handler_class())
        self._http.daemon_threads = True
        self._thread: threading.Thread | None = None
        self._data_pages = 0
        self._generation = 0

    def __repr__(self) -> str:
        return f"<BusinessApi {self.url}: {len(self.invoices[0])} invoices, {len(self.resources)} v1 resources>"

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}"

    def set_fault(self, name: str, times: int | None = None) -> None:
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}; choose one of {', '.join(FAULTS)}")
        self.faults.active[name] = times
        self._restart_page_count()

    def _restart_page_count(self) -> None:
        """ "From the second page on" counts from here, and only requests that arrive from now on: an answer
        still on its way from before (a slow one its client gave up on) does not count."""
        self._generation += 1
        self._data_pages = 0

    def clear_faults(self) -> None:
        self.faults.active.clear()
        self._restart_page_count()
        self.rate_limit = None
        self._calls.clear()

    def revoke(self) -> None:
        """The company disconnected the app: the refresh token and every access token stop working."""
        with self.oauth_lock:
            self.spent_refresh_tokens.append(self.refresh_token)
            self.refresh_token = secrets.token_urlsafe(24)
            self.access_tokens.clear()

    def new_refresh_token(self) -> str:
        """A fresh authorisation (what the consultant's consent flow gives): its refresh token."""
        with self.oauth_lock:
            self.refresh_token = secrets.token_urlsafe(24)
            return self.refresh_token

    def start(self) -> BusinessApi:
        """Serve in a thread of its own (a server already started is left as it is)."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._thread = threading.Thread(target=self._http.serve_forever, name="business-api", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (the CLI); close() afterwards."""
        self._http.serve_forever()

    def join(self) -> None:
        """Wait until a server started with start() stops (Ctrl-C interrupts the wait)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(0.5)

    def close(self) -> None:
        self._http.server_close()

    def stop(self) -> None:
        """Stop a server started with start()."""
        self._http.shutdown()
        self.close()

    def __enter__(self) -> BusinessApi:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- answering ----------------------------------------------------------------------------------
    def _authorized(self, headers, query: dict[str, str]) -> bool:
        given = headers.get("Authorization", "")
        candidates = [headers.get("X-API-Key", ""), query.get("api_key", "")]
        if given.startswith("Bearer "):
            candidates.append(given[7:])
        elif given.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(given[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user, password = "", ""
            if user == BASIC_USER:
                candidates.append(password)
        if any(c and hmac.compare_digest(c.encode(), self.token.encode()) for c in candidates):
            return True
        with self.oauth_lock:
            return given.startswith("Bearer ") and self.access_tokens.get(given[7:], 0) > time.time()

    def _token(self, headers, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """POST /oauth/token: client credentials or a refresh token, each refresh token good for one use."""
        form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
        client_id, client_secret = form.get("client_id", ""), form.get("client_secret", "")
        given = headers.get("Authorization", "")
        if given.startswith("Basic "):
            try:
                client_id, _, client_secret = base64.b64decode(given[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                client_id, client_secret = "", ""
        grant = form.get("grant_type", "")

        def error(status: int, code: str) -> tuple[int, dict[str, str], bytes]:
            self.grants.append((grant, status))
            return status, {}, json.dumps({"error": code}).encode()

        if client_id != CLIENT_ID or not hmac.compare_digest(client_secret.encode(), self.token.encode()):
            return error(401, "invalid_client")
        with self.oauth_lock:
            if grant == "refresh_token":
                presented = form.get("refresh_token", "")
                time.sleep(self.token_delay_s)
                if not hmac.compare_digest(presented.encode(), self.refresh_token.encode()):
                    self.spent_refresh_tokens.append(presented)
                    return error(400, "invalid_grant")
                self.spent_refresh_tokens.append(presented)
                self.refresh_token = secrets.token_urlsafe(24)
                extra = {"refresh_token": self.refresh_token}
            elif grant == "client_credentials":
                extra = {}
            else:
                return error(400, "unsupported_grant_type")
            access = secrets.token_urlsafe(24)
            self.access_tokens[access] = time.time() + self.token_ttl_s
        self.grants.append((grant, 200))
        return 200, {}, json.dumps({"access_token": access, "token_type": "Bearer", "expires_in": self.token_ttl_s,
                                    **extra}).encode()

    def _limited(self) -> tuple[int | None, dict[str, str]]:
        """The call limit on /v2/: a 429's status (None when the call is allowed) and the headers that say it."""
        if self.rate_limit is None:
            return None, {}
        calls, period = self.rate_limit
        now = time.time()
        with self.faults.lock:
            if self._calls and now - self._calls[0] >= period:
                self._calls.clear()  # a new period starts with its first call
            start = self._calls[0] if self._calls else now
            reset = str(max(1, math.ceil(start + period - now)))
            if len(self._calls) >= calls:
                return 429, {"Retry-After": reset, "X-Rate-Limit-Remaining": "0", "X-Rate-Limit-Reset": reset}
            self._calls.append(now)
            left = calls - len(self._calls)
        return None, {"X-Rate-Limit-Remaining": str(left), "X-Rate-Limit-Reset": reset}

    def _invoice_page(self, q: dict[str, str], headers) -> tuple[int, dict[str, str], bytes]:
        if headers.get("Xero-Tenant-Id") != TENANT_ID:
            return 403, {}, b'{"error": "the Xero-Tenant-Id header names no organisation this app may read"}'
        updated, bodies = self.invoices
        lo, hi = 0, len(updated)
        for op, y, m, d in _WHERE.findall(q.get("where", "")):
            at = bisect.bisect_left(updated, datetime(int(y), int(m), int(d), tzinfo=UTC).timestamp())
            lo, hi = (max(lo, at), hi) if op == ">=" else (lo, min(hi, at))
        since = headers.get("If-Modified-Since")
        if since:
            try:
                lo = max(lo, bisect.bisect_left(updated, parsedate_to_datetime(since).timestamp()))
            except (TypeError, ValueError):
                raise ValueError(f"If-Modified-Since {since!r} is not an HTTP date") from None
        page = int(q.get("page") or 1)
        if page < 1:
            raise ValueError("page must be 1 or more")
        start = lo + (page - 1) * INVOICE_PAGE
        items = list(bodies[start:min(hi, start + INVOICE_PAGE)])
        if items and self.faults.take("bad_date"):
            items[0] = re.sub(r'"Date": "/Date\((\d+)\+0000\)/"', lambda m: '"Date": "' + datetime.fromtimestamp(
                int(m.group(1)) / 1000, UTC).strftime("%Y-%m-%d") + '"', items[0], count=1)
        return 200, {}, _obj([("Id", json.dumps(secrets.token_hex(8))), ("Status", '"OK"'),
                              ("Invoices", "[" + ", ".join(items) + "]")]).encode()

    def answer(self, method: str, target: str, headers, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        generation = self._generation
        parts = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        if self.faults.take("slow"):
            time.sleep(self.faults.slow_s)
        if parts.path == "/oauth/token" and method == "POST":
            return self._token(headers, body)
        if parts.path == "/v2/Invoices" and method == "GET":
            if not self._authorized(headers, query):
                return 401, {"WWW-Authenticate": 'Bearer realm="accounting"'}, b'{"error": "unauthorized"}'
            status, limit_headers = self._limited()
            if status is not None:
                return status, limit_headers, b'{"error": "rate limit exceeded"}'
            try:
                status, extra, page = self._invoice_page(query, headers)
            except ValueError as exc:
                return 400, limit_headers, json.dumps({"error": str(exc)}).encode()
            return status, {**limit_headers, **extra}, page
        if not self._authorized(headers, query):
            return 401, {"WWW-Authenticate": 'Bearer realm="business-api"'}, b'{"error": "unauthorized"}'
        if parts.path not in self.resources or method != "GET":
            return 404, {}, json.dumps({"error": f"no resource {parts.path}"}).encode()
        if self.faults.take("rate_limit"):
            first = self.faults.active.get("rate_limit") in (None, 1)  # seconds first, then an HTTP date
            after = (str(self.faults.retry_after_s) if first else
                     format_datetime(datetime.fromtimestamp(time.time() + self.faults.retry_after_s, UTC), True))
            return 429, {"Retry-After": after}, b'{"error": "too many requests"}'
        if self.faults.take("server_error"):
            return 500, {}, b'{"error": "internal error"}'
        if self.faults.take("html"):
            return 200, {"Content-Type": "text/html; charset=utf-8"}, (
                b"<!doctype html><html><head><title>Down for maintenance</title></head>"
                b"<body><h1>We'll be back soon</h1></body></html>")
        try:
            status, extra, body = self._page(parts.path, query)
        except ValueError as exc:
            return 400, {}, json.dumps({"error": str(exc)}).encode()
        if generation != self._generation:
            return status, extra, body
        self._data_pages += 1
        if self._data_pages >= 2 and self.faults.take("truncated"):
            body = body[: len(body) // 2]
        return status, extra, body

    def _page(self, path: str, q: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        resource, (lo_param, hi_param), as_date = self.resources[path]
        lo = bisect.bisect_left(resource.keys, _moment(q[lo_param], as_date)) if q.get(lo_param) else 0
        hi = bisect.bisect_left(resource.keys, _moment(q[hi_param], as_date)) if q.get(hi_param) else len(
            resource.keys)
        total = max(0, hi - lo)
        runaway = self.faults.take("runaway")
        repeat = self.faults.take("repeat_cursor")
        paging = q.get("paging", "page")
        size = int(q.get("limit" if paging == "offset" else "page_size") or 100)
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise ValueError(f"page size must be 1..{MAX_PAGE_SIZE}")
        if paging == "offset":
            start = int(q.get("offset") or 0)
        elif paging == "cursor":
            start = _decode_cursor(q.get("cursor") or "")
        elif paging == "none":
            start, size = 0, max(total, 1)
        else:
            start = (int(q.get("page") or 1) - 1) * size
        if start < 0:
            raise ValueError("offset and page must not be negative")
        if repeat and paging in ("page", "offset"):
            start = 0
        end = start + size if runaway else min(start + size, total)
        items = [self._record(resource, lo, total, i) for i in range(start, max(start, end))]
        has_next = end < total or runaway
        next_start = size if repeat else end
        meta: dict[str, object] = {}
        body: dict[str, str] = {"data": _obj([("items", "[" + ", ".join(items) + "]")])}
        headers: dict[str, str] = {}
        base = {k: v for k, v in q.items() if k not in ("page", "offset", "cursor", "api_key")}
        page_no = start // size + 1
        pages = 10**6 if runaway else -(-total // size)
        if paging == "page":
            meta = {"page": page_no, "page_size": size, "total_pages": pages,
                    "total_count": 10**8 if runaway else total}
        elif paging == "offset":
            meta = {"offset": start, "limit": size, "total_count": 10**8 if runaway else total}
        elif paging == "cursor":
            meta = {"page_size": size, "next_cursor": _encode_cursor(next_start) if has_next else None}
        elif paging in ("link", "next"):
            nxt = f"{path}?{urlencode({**base, 'page': next_start // size + 1})}" if has_next else None
            if paging == "link" and nxt:
                headers["Link"] = f'<{self.url}{nxt}>; rel="next", <{self.url}{path}?{urlencode(base)}>; rel="first"'
            if paging == "next":
                body["links"] = _obj([("next", json.dumps(nxt))])
        if meta:
            body["meta"] = json.dumps(meta)
        return 200, headers, _obj(list(body.items())).encode()

    def _record(self, resource: Resource, lo: int, total: int, i: int) -> str:
        if i < total:
            return resource.bodies[lo + i]
        # runaway paging: the records go round again under new ids, so every page is new
        n = max(total, 1)
        text = resource.bodies[lo + i % n] if total else _obj([(resource.id_field, '"X"')])
        marker = f'"{resource.id_field}": "'
        return text.replace(marker, f"{marker}R{i // n}-", 1)

    def _handler_class(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "NorthwindBusinessAPI/1.0"

            def do_GET(self) -> None:  # noqa: N802 - the standard library's name
                self._answer("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._answer("POST")

            def _answer(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                sent = self.rfile.read(length) if length else b""
                status, headers, body = api.answer(method, self.path, self.headers, sent)
                api.log.append((self.path, status))
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", headers.pop("Content-Type", "application/json"))
                    self.send_header("Content-Length", str(len(body)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout): nothing to answer

            def log_message(self, fmt: str, *args) -> None:
                if not api.quiet:
                    super().log_message(fmt, *args)

        return Handler


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        return int(text.removeprefix("o:"))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError(f"cursor {cursor!r} is not one this API gave out") from None
