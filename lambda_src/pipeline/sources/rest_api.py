"""A business system's REST API, read page by page into one raw sheet for the loader.

Everything about the API is configuration (`ApiOptions`): the resource and where its records sit in the
body, authentication (the credential from Secrets Manager), the pagination style, the incremental window.
Values stay exact text: JSON numbers are parsed as Decimal and written back as written, so money is never
float-rounded. A fault that could load a wrong or partial picture (a body that is not JSON, an HTML page, a
cursor or page that repeats, more pages than the guard allows) is a LoadError and nothing is committed.
Fetching stops early only at a page boundary, when the time budget says so; the caller commits the complete
pages and keeps `next_position` to resume from.

OAuth 2.0 access tokens come from the API's token endpoint (client credentials, or a refresh token that the API
replaces at every use: the new one is written back to the secret before the access token is used, under a lock
so two runs never spend the same one). Records may sit in nested lists (`Invoices[].LineItems[]`), a column
reaching its parent's fields with `^.`; dates declared in `api.formats` are read as declared, and a value that
does not fit is quarantined. Call limits announced in response headers are respected: the client waits when
the wait fits the time budget, else it stops, commits nothing of the window and says when the API takes calls
again.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from email.utils import format_datetime, parsedate_to_datetime
from functools import lru_cache
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urljoin, urlsplit, urlunsplit

import boto3
import psycopg2.errors
import requests
from botocore.exceptions import BotoCoreError, ClientError
from psycopg2 import sql

from pipeline.config import SECRET_FIELDS, ApiOptions
from pipeline.sources import LoadError, RawSheet, copy_csv, in_pieces, map_header
from pipeline.sources.kinds import API_PAGES_PREFIX
from pipeline.sources.s3_csv import raw_columns

_MISSING = object()
_HINTS = {401: "check the credential in auth.secret", 403: "the credential may not read this resource",
          404: "check base_url and resource.path"}


class OutOfTime(Exception):
    """The next wait or request would eat into the time kept for committing."""


class RateLimited(LoadError):
    """The API's call limit is spent for longer than this run can wait: nothing of the window is committed."""


# base URL -> when (epoch seconds) the API takes calls again: kept by a warm function between invocations, and in
# meta.api_call_limits for the next cold one (load_call_limit, save_call_limit)
_CALLS_RESUME: dict[str, float] = {}
_LOCAL_LOCKS: dict[str, threading.Lock] = {}
_LOCAL_LOCKS_GUARD = threading.Lock()


def load_call_limit(conn, base_url: str) -> None:
    """When the API takes calls again, as an earlier invocation (warm or not, this instance or another) noted it.
    A warehouse not yet migrated to keep limits (code deployed before `migrate`) has nothing to tell."""
    try:
        with conn.cursor() as cur:
            cur.execute("select extract(epoch from resume_at)::float8 from meta.api_call_limits "
                        "where base_url = %s and resume_at > now()", (base_url,))
            row = cur.fetchone()
    except psycopg2.errors.UndefinedTable:
        conn.rollback()
        return
    conn.commit()
    if row:
        _CALLS_RESUME[base_url] = max(_CALLS_RESUME.get(base_url, 0.0), row[0])


def save_call_limit(conn, source: str, base_url: str) -> None:
    """This invocation's word on the API's call limit, for the next one: when it takes calls again. A limit
    noted by another run and not yet over is never cleared."""
    until = _CALLS_RESUME.get(base_url)
    conn.rollback()  # whatever the window left open
    with conn.cursor() as cur:
        if until is not None and until > time.time():
            cur.execute("insert into meta.api_call_limits (base_url, source, resume_at) "
                        "values (%s, %s, to_timestamp(%s)) on conflict (base_url) do update set "
                        "source = excluded.source, updated_at = now(), "
                        "resume_at = greatest(meta.api_call_limits.resume_at, excluded.resume_at)",
                        (base_url, source, until))
        else:
            cur.execute("delete from meta.api_call_limits where base_url = %s and resume_at <= now()", (base_url,))
    conn.commit()


class PageKeeper:
    """A window's pages as the API sent them, put in the landing bucket as they are fetched (never all held in
    memory): what validation reads again with a reader of its own, and what an audit asks for. `summary()`
    waits for the last one and gives their place and a digest of them, in order, for the batch's plan."""

    def __init__(self, bucket: str, source: str, batch_id: int, hidden: str | None = None):
        from concurrent.futures import ThreadPoolExecutor

        self.bucket, self.prefix = bucket, f"{API_PAGES_PREFIX}{source}/{batch_id:012d}/"
        self.hidden = hidden  # an API key sent in the query: never kept, even where the API echoes its URLs
        self.s3 = boto3.client("s3")
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="keep-page")
        self.pending: list = []
        self.digest = hashlib.sha256()
        self.pages = 0

    def put(self, body: bytes) -> None:
        if self.hidden:
            for form in {self.hidden, quote(self.hidden, safe=""), quote_plus(self.hidden)}:
                body = body.replace(form.encode(), b"***")
        self.pages += 1
        self.digest.update(hashlib.sha256(body).digest())
        self.pending.append(self.pool.submit(self.s3.put_object, Bucket=self.bucket, Body=body,
                                             Key=f"{self.prefix}page-{self.pages:05d}.json",
                                             ContentType="application/json"))

    def close(self) -> None:
        """Wait for the uploads under way, whatever became of them."""
        self.pool.shutdown(wait=True)

    def summary(self) -> dict:
        try:
            for future in self.pending:
                future.result()
        finally:
            self.close()
        return {"bucket": self.bucket, "prefix": self.prefix, "pages": self.pages, "sha256": self.digest.hexdigest()}


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


def read_secret(secret_id: str) -> dict:
    """The secret's JSON as it stands now (no cache): what a refresh reads after taking its lock."""
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


@lru_cache(maxsize=16)
def _secret(secret_id: str) -> dict:
    return read_secret(secret_id)


def _missing_fields(auth, data: dict) -> None:
    missing = [f for f in SECRET_FIELDS[auth.type] if not data.get(f)]
    if missing:
        raise LoadError(f"auth.secret: the secret {auth.secret!r} has no {' or '.join(missing)} field, which "
                        f"{auth.type} authentication needs")


def credentials(options: ApiOptions) -> dict[str, str]:
    """The fields the auth type needs, from Secrets Manager; an error names the missing field, never a value."""
    auth = options.auth
    if auth.type == "none":
        return {}
    data = _secret(auth.secret)
    _missing_fields(auth, data)
    return {f: str(data[f]) for f in SECRET_FIELDS[auth.type]}


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


def fill_window(template: str, start: datetime | None, end: datetime | None, fmt: str) -> str | None:
    """A templated parameter with the window's ends written in: {from:%Y,%m,%d} (strftime, UTC) or {from} (the
    incremental format); None when it names an end the window has not."""
    moments = {"from": start, "to": end}
    if any(moments[f] is None for f in re.findall(r"\{(from|to)(?::[^{}]*)?\}", template)):
        return None

    def one(match: re.Match) -> str:
        moment = moments[match.group(1)]
        if match.group(2):
            return moment.astimezone(UTC).strftime(match.group(2))
        return window_value(moment, fmt)

    return re.sub(r"\{(from|to)(?::([^{}]*))?\}", one, template)


# -- dates as the API writes them ---------------------------------------------------------------------------
_MS_JSON = re.compile(r"^/Date\((-?\d+)([+-]\d{4})?\)/$")
FORMAT_EXAMPLES = {"iso": "2018-10-20T00:00:00+01:00", "ms_json": "/Date(1539993600000+0000)/",
                   "epoch_s": "1539993600", "epoch_ms": "1539993600000"}


def parse_moment_as(text: str, fmt: str) -> datetime:
    """A date or time written as `fmt` says (api.formats), with the offset it was written in; ValueError when
    it does not fit."""
    text = text.strip()
    if fmt == "ms_json":
        match = _MS_JSON.match(text)
        if not match:
            raise ValueError
        offset = match.group(2) or "+0000"
        zone = timezone((1 if offset[0] == "+" else -1) * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:])))
        return datetime.fromtimestamp(int(match.group(1)) / 1000, UTC).astimezone(zone)
    if fmt in ("epoch_s", "epoch_ms"):
        try:
            number = Decimal(text)
        except InvalidOperation:
            raise ValueError from None
        if not number.is_finite():
            raise ValueError
        return datetime.fromtimestamp(float(number / (1000 if fmt == "epoch_ms" else 1)), UTC)
    if fmt == "iso":
        if not re.match(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$", text):
            raise ValueError
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    return datetime.strptime(text, fmt)


def moment_text(moment: datetime, kind: str | None = None) -> str:
    """A parsed moment as the loader reads it: a date column gets the day as written (in the offset it was
    written in, not its UTC day), a timestamp column the instant with its offset; for a column of unknown
    type, the day alone at midnight, else the day and time."""
    if kind == "date":
        return moment.date().isoformat()
    if kind is None and (moment.hour, moment.minute, moment.second, moment.microsecond) == (0, 0, 0, 0):
        return moment.date().isoformat()
    return moment.isoformat(sep=" ")


# -- nested records -----------------------------------------------------------------------------------------
def record_steps(path: str) -> list[str]:
    """api.resource.records as its steps: 'Invoices[].LineItems[]' -> ['Invoices', 'LineItems']; 'data.items'
    -> ['data.items']."""
    return path.removesuffix("[]").split("[].") if "[]" in path else [path]


class Row:
    """One record with the records it sits in (nearest first) and its position in its list (from 1)."""

    __slots__ = ("parents", "position", "record")

    def __init__(self, record: dict, parents: tuple[dict, ...], position: int):
        self.record, self.parents, self.position = record, parents, position

    def value(self, field: str) -> object:
        """A column's field: a dotted path; ^.path in the record it sits in (^^.path two up); # its position."""
        if field == "#":
            return self.position
        depth = len(field) - len(field.lstrip("^"))
        if depth and field[depth:depth + 1] == ".":
            if depth > len(self.parents):
                return _MISSING
            return get_path(self.parents[depth - 1], field[depth + 1:])
        return get_path(self.record, field)


@contextmanager
def _local_lock(key: str) -> Iterator[None]:
    with _LOCAL_LOCKS_GUARD:
        lock = _LOCAL_LOCKS.setdefault(key, threading.Lock())
    with lock:
        yield


def pg_refresh_lock(conn) -> Callable[[str], AbstractContextManager]:
    """A refresh lock held in PostgreSQL: a transaction-scoped advisory lock on `conn` (idle between the
    attempt's start and the batch), so refreshes of one secret by any number of functions take turns."""

    @contextmanager
    def hold(key: str) -> Iterator[None]:
        with _local_lock(key):
            try:
                with conn.cursor() as cur:
                    cur.execute("select pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"oauth refresh {key}",))
                yield
            finally:
                conn.rollback()  # the transaction held nothing but the lock

    return hold


class TokenSource:
    """OAuth 2.0 access tokens, each kept for its lifetime (less a minute) by the client that asked for it."""

    def __init__(self, options: ApiOptions, source: str, lock: Callable[[str], AbstractContextManager] | None):
        self.options, self.source = options, source
        self.lock = lock or _local_lock
        self._token: tuple[str, float] | None = None
        self.grants = 0

    def token(self, force: bool = False) -> str:
        if self._token and not force and self._token[1] > time.monotonic():
            return self._token[0]
        auth = self.options.auth
        if auth.type == "oauth2_client_credentials":
            creds = credentials(self.options)
            form = {"grant_type": "client_credentials", **({"scope": auth.scope} if auth.scope else {})}
            body = self._post(form, creds)
        else:
            with self.lock(auth.secret):
                creds = read_secret(auth.secret)  # as it stands now: another run may have just replaced it
                _missing_fields(auth, creds)
                body = self._post({"grant_type": "refresh_token", "refresh_token": creds["refresh_token"]}, creds)
                new = body.get("refresh_token")
                if new and new != creds["refresh_token"]:
                    self._store(creds, str(new))
        access = body.get("access_token")
        if not access:
            raise LoadError(f"auth.token_url: {auth.token_url} answered without an access_token")
        try:
            lifetime = float(body.get("expires_in", 3600))
        except (TypeError, ValueError):
            lifetime = 3600.0
        self._token = (str(access), time.monotonic() + max(0.0, lifetime - 60))
        return self._token[0]

    def _store(self, creds: dict, refresh_token: str) -> None:
        """The new refresh token written back before the access token is used: the old one is spent."""
        secret = self.options.auth.secret
        try:
            boto3.client("secretsmanager").put_secret_value(
                SecretId=secret, SecretString=json.dumps({**creds, "refresh_token": refresh_token}))
        except (ClientError, BotoCoreError) as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
            raise LoadError(f"auth.secret: the API replaced the refresh token but the new one could not be written "
                            f"to the secret {secret!r} ({code}); the old one is spent: authorise again and store "
                            f"the new refresh token with `playbook secret set {self.source}`") from None
        _secret.cache_clear()

    def _post(self, form: dict[str, str], creds: dict) -> dict:
        auth = self.options.auth
        self.grants += 1
        basic = None
        if auth.client_auth == "basic":
            basic = (str(creds["client_id"]), str(creds["client_secret"]))
        else:
            form = {**form, "client_id": str(creds["client_id"]), "client_secret": str(creds["client_secret"])}
        try:
            response = requests.post(auth.token_url, data=form, auth=basic, headers={"Accept": "application/json"},
                                     timeout=self.options.timeout_s)
        except requests.RequestException as exc:
            raise LoadError(f"auth.token_url: {auth.token_url}: no token ({type(exc).__name__})") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise LoadError(f"auth.token_url: {auth.token_url}: HTTP {response.status_code} without a JSON answer")
        error = str(body.get("error") or "")
        if response.status_code < 400 and not error:
            return body
        again = f"`playbook secret set {self.source}`"
        if error == "invalid_grant" and auth.type == "oauth2_refresh_token":
            raise LoadError(f"{self.source}: the refresh token was revoked or has expired (invalid_grant from "
                            f"{auth.token_url}): authorise the app again and store the new refresh token with {again}")
        if error == "invalid_client" or response.status_code == 401:
            raise LoadError(f"{self.source}: the client id or secret in {auth.secret!r} was refused "
                            f"({error or 'HTTP 401'} from {auth.token_url}): store the right ones with {again}")
        if error == "invalid_grant":
            raise LoadError(f"{self.source}: the token endpoint {auth.token_url} refused the grant (invalid_grant): "
                            f"check the client's access and store its credentials with {again}")
        detail = f"{error}: {body.get('error_description')}" if body.get("error_description") else error
        raise LoadError(f"auth.token_url: {auth.token_url}: HTTP {response.status_code} ({detail or 'no error'})")


class ApiClient:
    """GET with retries: exponential backoff with jitter on connection errors, timeouts, 429 and 5xx."""

    def __init__(self, options: ApiOptions, remaining: Callable[[], float],
                 sleep: Callable[[float], None] = time.sleep, source: str = "the source",
                 lock: Callable[[str], AbstractContextManager] | None = None):
        self.options, self.remaining, self.sleep = options, remaining, sleep
        self.session = requests.Session()
        self.session.headers.update({"Accept": "application/json", **options.headers})
        self._query: dict[str, str] = {}
        auth = options.auth
        self.tokens = TokenSource(options, source, lock) if auth.type.startswith("oauth2_") else None
        creds = credentials(options) if self.tokens is None else {}
        if auth.type == "bearer":
            self.session.headers["Authorization"] = f"Bearer {creds['token']}"
        elif auth.type == "api_key_header":
            self.session.headers[auth.header] = creds["api_key"]
        elif auth.type == "api_key_query":
            self._query = {auth.param: creds["api_key"]}
        elif auth.type == "basic":
            self.session.auth = (creds["username"], creds["password"])
        self.hidden_param = auth.param if auth.type == "api_key_query" else None
        self.hidden_value = self._query.get(self.hidden_param) if self.hidden_param else None
        self.requests = 0
        self.retries = 0
        self.waited_s = 0.0  # for the API's call limit

    def shown(self, url: str) -> str:
        return without_param(url, self.hidden_param)

    def _backoff(self, attempt: int) -> float:
        r = self.options.retry
        return min(r.max_backoff_s, r.backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)  # noqa: S311

    # -- the API's call limit ------------------------------------------------------------------------
    def _wait_for_limit(self, wait: float, shown: str, why: str) -> None:
        """Wait for the API's call limit when the wait fits the time budget; else stop, saying when to retry."""
        limit = self.options.rate_limit
        longest = limit.max_wait_s if limit else self.options.retry.max_retry_after_s
        if wait <= longest and self.remaining() - wait >= self.options.reserve_s:
            self.sleep(wait)
            self.waited_s += wait
            return
        when = datetime.fromtimestamp(time.time() + wait, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        raise RateLimited(f"GET {shown}: {why}; the API takes calls again at {when} (in {wait:.0f} s), longer than "
                          "this run can wait: nothing of this window was committed; run it again after that time "
                          "(the next scheduled run does)")

    def _before_call(self, shown: str) -> None:
        until = _CALLS_RESUME.get(self.options.base_url)
        if until is None:
            return
        wait = until - time.time()
        if wait > 0:
            self._wait_for_limit(wait, shown, "the API's call limit is spent")
        _CALLS_RESUME.pop(self.options.base_url, None)

    def _note_limit(self, response: requests.Response) -> None:
        """The calls left and the period's reset, from the headers: the next call waits when none is left."""
        limit = self.options.rate_limit
        if limit is None:
            return
        try:
            left = int(Decimal(response.headers.get(limit.remaining_header, "").strip()))
        except (InvalidOperation, ValueError):
            return
        if left > limit.keep:
            return
        text = response.headers.get(limit.reset_header or "", "").strip()
        wait = None
        if text:
            try:
                number = float(text)
            except ValueError:
                number = None
            if limit.reset == "http_date" or number is None:
                wait = retry_after_seconds(text)
            else:
                wait = max(0.0, number - time.time()) if limit.reset == "epoch" else max(0.0, number)
        if wait is None:
            wait = retry_after_seconds(response.headers.get("Retry-After")) or 60.0
        _CALLS_RESUME[self.options.base_url] = time.time() + wait

    def get_json(self, url: str, params: dict[str, str],
                 headers: dict[str, str] | None = None) -> tuple[object, requests.Response]:
        retry = self.options.retry
        query = dict(params)
        if self._query and self.hidden_param not in dict(parse_qsl(urlsplit(url).query)):
            query.update(self._query)
        shown = self.shown(requests.Request("GET", url, params=query).prepare().url)
        renewed = False
        for attempt in range(1, retry.attempts + 1):
            self._before_call(shown)
            sent = dict(headers or {})
            if self.tokens is not None:
                sent["Authorization"] = f"Bearer {self.tokens.token()}"
            self.requests += 1
            try:
                response = self.session.get(url, params=query, headers=sent, timeout=self.options.timeout_s)
            except requests.Timeout:
                problem, wait = f"no answer within {self.options.timeout_s:g} s (timed out)", self._backoff(attempt)
            except requests.ConnectionError as exc:
                problem, wait = f"connection failed ({type(exc).__name__})", self._backoff(attempt)
            else:
                status = response.status_code
                self._note_limit(response)
                if status == 401 and self.tokens is not None and not renewed:
                    renewed = True  # the access token was revoked before its time: one new one
                    self.tokens.token(force=True)
                    problem, wait = "HTTP 401 with an access token", 0.0
                elif status == 429 and self.options.rate_limit is not None:
                    after = retry_after_seconds(response.headers.get("Retry-After"))
                    wait = after if after is not None else max(
                        0.0, _CALLS_RESUME.get(self.options.base_url, time.time() + 60) - time.time())
                    _CALLS_RESUME[self.options.base_url] = time.time() + wait
                    self._wait_for_limit(wait, shown, f"HTTP 429 {response.reason}")
                    _CALLS_RESUME.pop(self.options.base_url, None)
                    problem, wait = f"HTTP 429 {response.reason}", 0.0
                elif status == 429 or status >= 500:
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
                 remaining: Callable[[], float] | None = None, client: ApiClient | None = None,
                 lock: Callable[[str], AbstractContextManager] | None = None, types: dict[str, str] | None = None):
        self.source, self.options, self.columns, self.required = source, options, columns, required
        self.lock = lock
        self.window = window
        self.resume = resume or {}
        self.remaining = remaining or (lambda: float("inf"))
        self._client = client  # made on the first fetch: reading the secret can fail like any request
        self.header = list(dict.fromkeys(columns.values()))
        self.rows: list[list[str]] = []
        self.numbers: list[int] = []  # each row's number in the window (a quarantined one keeps its number)
        self.rejects: list[tuple[int, dict, str, str]] = []
        self.pages_before = int(self.resume.get("pages", 0))
        self.records_before = int(self.resume.get("records", 0))
        self.top_before = int(self.resume.get("top_records", self.records_before))
        self.top_records = 0  # records of the outermost list (the ones the API pages)
        self.steps = record_steps(options.resource.records)
        # header index -> (column, format, its type when known) of the columns (or attributes) api.formats declares
        read_as = {c: c if c in columns else f"attribute {c}" for c in options.formats}
        self.formats = {self.header.index(columns[k]): (c, options.formats[c], (types or {}).get(k))
                        for c, k in read_as.items() if k in columns}
        self.pages = 0
        self.keep: Callable[[bytes], None] | None = None  # given each page as the API sent it (PageKeeper.put)
        self.next_position: dict | None = None
        self.last_page_sha: str | None = self.resume.get("last_page_sha")
        self.stopped_for_time = False
        self.fetched = False

    @property
    def client(self) -> ApiClient:
        if self._client is None:
            self._client = ApiClient(self.options, self.remaining, source=self.source, lock=self.lock)
        return self._client

    # -- where and what -----------------------------------------------------------------------------
    @property
    def resource_url(self) -> str:
        return self.options.base_url + self.options.resource.path

    def _base_params(self) -> dict[str, str]:
        params = dict(self.options.resource.params)
        inc, (start, end) = self.options.incremental, self.window
        if inc:
            if inc.from_param and start is not None:
                params[inc.from_param] = window_value(start, inc.format)
            if inc.to_param and end is not None:
                params[inc.to_param] = window_value(end, inc.format)
            for name, template in inc.params.items():
                value = fill_window(template, start, end, inc.format)
                if value is not None:
                    params[name] = value
        return params

    def _headers(self) -> dict[str, str]:
        """The window's start as a header (If-Modified-Since), when the API takes it so."""
        inc, (start, _) = self.options.incremental, self.window
        if inc and inc.header and start is not None:
            return {inc.header: format_datetime(start.astimezone(UTC), usegmt=True)}
        return {}

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
                body, response = self.client.get_json(url, params, self._headers())
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
            if self.keep is not None:
                self.keep(response.content)
            for row in self._expand(records, shown):
                self._add([json_text(row.value(f)) for f in self.header])
            self.top_records += len(records)
            self.pages += 1
            position = self._next(position, body, response, len(records), seen, shown)
        self.next_position = position
        self.fetched = True

    def _next(self, position: dict, body: object, response: requests.Response, n: int, seen: set[str],
              shown: str) -> dict | None:
        p = self.options.pagination
        if p.style == "none" or n == 0:
            return None
        total_records = self.top_before + self.top_records
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

    def _add(self, values: list[str]) -> None:
        """One row, its dates read as api.formats declares them; a date that does not fit is quarantined."""
        number = self.records_before + len(self.rows) + len(self.rejects) + 1
        problems = []
        for index, (column, fmt, kind) in self.formats.items():
            text = values[index]
            if not text:
                continue
            try:
                values[index] = moment_text(parse_moment_as(text, fmt), kind)
            except (ValueError, OverflowError, OSError):
                example = FORMAT_EXAMPLES.get(fmt, fmt)
                problems.append(f"{column} {text!r} is not a date in the format {fmt} (api.formats; e.g. {example})")
        if problems:
            raw = dict(zip(self.header, values, strict=True))
            self.rejects.append((number, raw, f"row {number}: {'; '.join(problems)}", "invalid_value"))
            return
        self.rows.append(values)
        self.numbers.append(number)

    def _expand(self, records: list[dict], shown: str) -> Iterator[Row]:
        """The rows of a page: the records themselves, or the records of their nested lists (Invoices[].LineItems[])."""
        rows = [Row(r, (), i + 1) for i, r in enumerate(records)]
        for step in self.steps[1:]:
            deeper = []
            for row in rows:
                inner = get_path(row.record, step)
                if inner is _MISSING or inner is None:
                    continue  # a parent with no lines gives no rows
                if not isinstance(inner, list) or not all(isinstance(r, dict) for r in inner):
                    raise LoadError(f"GET {shown}: {step!r} in record {row.position} is not a list of objects "
                                    f"(resource.records {self.options.resource.records!r})")
                parents = (row.record, *row.parents)
                deeper.extend(Row(r, parents, i + 1) for i, r in enumerate(inner))
            rows = deeper
        return iter(rows)

    def _records(self, body: object, shown: str) -> list[dict]:
        path = self.steps[0]
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
                "records": self.records_before + len(self.rows) + len(self.rejects),
                "top_records": self.top_before + self.top_records, "last_page_sha": self.last_page_sha}

    # -- the loader's side --------------------------------------------------------------------------
    def sheets(self) -> Iterator[RawSheet]:
        if not self.fetched:
            self.fetch()
        where = f"{self.display}: columns"
        mapping = map_header(self.header, self.columns, where, self.required)
        first_row = self.records_before + 1
        name = (f"pages {self.pages_before + 1}-{self.pages_before + self.pages}" if self.pages else None)
        rows, numbers, width = self.rows, self.numbers, len(self.header)

        def copy_rows(cur, target: str) -> None:
            statement = sql.SQL("copy {} (_sheet, _row, {}) from stdin with (format csv)").format(
                sql.Identifier(target), raw_columns(width)).as_string(cur)
            copy_csv(cur, statement, in_pieces([name, n, *row] for n, row in zip(numbers, rows, strict=True)))

        yield RawSheet(name, self.header, mapping, first_row, copy_rows, rejects=list(self.rejects))
