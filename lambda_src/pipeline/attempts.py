"""Every attempt at a batch, visible in the ledger (meta.batches) whatever becomes of it.

An attempt writes its 'started' row on its own, committed before the batch's transaction begins (the
pattern of Powertools' idempotency records: an in-progress record with an expiry). The batch's transaction
finishes it as 'committed' together with the data; a failure finishes it as 'failed', with what happened in
the words of the person who fixes it; an attempt that died (the function killed for its time or memory, the
connection lost) stays 'started' until it expires, and is then 'abandoned'.
"""

from __future__ import annotations

import contextlib
import math
import re
import zipfile
from collections.abc import Callable, Iterator

import psycopg2
import psycopg2.errors
import psycopg2.extras

LAMBDA_MAX_S = 900  # the longest a Lambda function runs: an attempt without a deadline expires after it
EXPIRY_MARGIN_S = 30  # after the function's own deadline: time for the failure to be written
ABANDONED = ("the attempt stopped before it finished (the function timed out, ran out of memory, was stopped or "
             "lost its database connection); nothing was committed")
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def abandon_expired(cur) -> int:
    """Attempts whose time is up without a finish: marked abandoned. How many there were."""
    cur.execute("update meta.batches set status = 'abandoned', finished_at = expires_at, error = %s "
                "where status = 'started' and expires_at < clock_timestamp()", (ABANDONED,))
    return cur.rowcount


class Attempt:
    """One attempt at loading a delivery: its ledger row, from 'started' to its end."""

    def __init__(self, conn, delivery, request_id: str | None, remaining: Callable[[], float]):
        self.conn, self.delivery, self.request_id = conn, delivery, request_id
        left = remaining()
        self.lifetime_s = (LAMBDA_MAX_S if math.isinf(left) else max(0.0, left)) + EXPIRY_MARGIN_S
        self.batch_id: int | None = None
        # what the loader decided about the delivery and why (pipeline.loader fills it in), kept with the row
        self.plan: dict = {}

    def start(self) -> int:
        """The 'started' row, committed on its own: the attempt is in the ledger from here on."""
        d = self.delivery
        with self.conn.cursor() as cur:
            abandon_expired(cur)
            cur.execute(
                "insert into meta.batches (source, source_kind, target_table, source_ref, object_key, object_etag,"
                " object_version, content_sha256, status, request_id, window_from, window_to, expires_at)"
                " values (%s, %s, %s, %s, %s, %s, %s, %s, 'started', %s, %s, %s,"
                " clock_timestamp() + make_interval(secs => %s)) returning batch_id",
                (d.source, d.kind, d.config.table, d.ref, d.object_key, d.etag, d.version, d.sha256, self.request_id,
                 *(d.window or (None, None)), self.lifetime_s))
            self.batch_id = cur.fetchone()[0]
        self.conn.commit()
        return self.batch_id

    def committed(self, cur, summary: dict) -> None:
        """Inside the batch's transaction: the row finished as committed, with the batch's counts and plan."""
        cur.execute(
            "update meta.batches set status = 'committed', finished_at = clock_timestamp(), content_sha256 = %(sha)s,"
            " rows_read = %(rows_read)s, rows_inserted = %(rows_inserted)s, rows_updated = %(rows_updated)s,"
            " rows_unchanged = %(rows_unchanged)s, rows_duplicate = %(rows_duplicate)s,"
            " rows_quarantined = %(rows_quarantined)s, rows_skipped = %(rows_skipped)s,"
            " amount_in = %(amount_in)s, amount_loaded = %(amount_loaded)s,"
            " amount_quarantined = %(amount_quarantined)s, amount_duplicate = %(amount_duplicate)s,"
            " rows_deleted = %(rows_deleted)s, amount_deleted = %(amount_deleted)s, plan = %(plan)s"
            " where batch_id = %(batch_id)s and status = 'started'",
            {**summary, "batch_id": self.batch_id, "sha": self.delivery.sha256,
             "plan": psycopg2.extras.Json(self.plan)})
        if cur.rowcount != 1:
            raise RuntimeError(f"{self.delivery.display}: attempt {self.batch_id} is no longer started in the ledger "
                               "(marked abandoned: it ran past its expiry); rolled back")

    def discard(self) -> None:
        """The delivery turned out to be loaded already (by another attempt): this one leaves no row."""
        with self.conn.cursor() as cur:
            cur.execute("delete from meta.batches where batch_id = %s and status = 'started'", (self.batch_id,))
        self.conn.commit()

    def failed(self, exc: BaseException) -> None:
        """After a failure: everything of the batch rolled back, the row finished as failed with the reason.
        Written on a new connection when the batch's own is lost; left started (to be abandoned) when even
        that cannot be done."""
        reason = describe(exc, self.delivery.display)
        for conn in (self.conn, None):
            own = conn is None
            try:
                if own:
                    from pipeline.db import connect

                    conn = connect()
                with contextlib.suppress(psycopg2.Error):
                    conn.rollback()
                with conn.cursor() as cur:
                    cur.execute("update meta.batches set status = 'failed', finished_at = clock_timestamp(),"
                                " error = %s, content_sha256 = coalesce(%s, content_sha256), plan = %s"
                                " where batch_id = %s and status = 'started'",
                                (reason, self.delivery.sha256, psycopg2.extras.Json(self.plan), self.batch_id))
                conn.commit()
                return
            except Exception:  # noqa: BLE001, S112 - the other connection is tried; the row expires otherwise
                continue
            finally:
                if own and conn is not None:
                    conn.close()


@contextlib.contextmanager
def attempted(conn, delivery, request_id: str | None, remaining: Callable[[], float]) -> Iterator[Attempt]:
    """An attempt at the delivery: started in the ledger, and finished as failed if the block raises."""
    attempt = Attempt(conn, delivery, request_id, remaining)
    attempt.start()
    try:
        yield attempt
    except BaseException as exc:
        attempt.failed(exc)
        raise


def describe(exc: BaseException, display: str) -> str:
    """What happened, in the words of the person who fixes it: never a driver's or a library's internals,
    never a NUL or another control character (PostgreSQL text cannot hold a NUL)."""
    from pipeline.loader import TimeBudgetExceeded
    from pipeline.sources import LoadError

    if isinstance(exc, LoadError | TimeBudgetExceeded):
        text = str(exc)
    elif isinstance(exc, psycopg2.InterfaceError) or (
            isinstance(exc, psycopg2.OperationalError) and not getattr(exc, "pgcode", None)):
        text = f"{display}: the database connection was lost during the load; nothing was committed"
    elif isinstance(exc, psycopg2.errors.AdminShutdown | psycopg2.errors.CrashShutdown):
        text = (f"{display}: the database connection was lost during the load (the server ended it: "
                f"{exc.diag.message_primary}); nothing was committed")
    elif isinstance(exc, psycopg2.Error):
        primary = exc.diag.message_primary if getattr(exc, "diag", None) else None
        text = (f"{display}: the database stopped the load ({primary or type(exc).__name__}); "
                "nothing was committed")
    elif type(exc).__name__ == "ClientError" and hasattr(exc, "response"):  # botocore: S3 and friends
        error = exc.response.get("Error", {})
        text = (f"{display}: AWS refused to give it ({error.get('Code', 'an error')}: {error.get('Message', '')}); "
                "nothing was loaded")
    elif isinstance(exc, MemoryError):
        text = f"{display}: the load ran out of memory; nothing was committed"
    elif isinstance(exc, zipfile.BadZipFile):
        text = f"{display}: the file is damaged (its zip structure is broken); deliver it again"
    elif isinstance(exc, UnicodeError):
        text = f"{display}: the text is not in the source's encoding ({exc}); set read.encoding for this source"
    elif isinstance(exc, KeyboardInterrupt | SystemExit):
        text = f"{display}: the load was stopped before it finished; nothing was committed"
    else:
        text = f"{display}: the load stopped on an unexpected error ({type(exc).__name__}: {exc}); nothing was " \
               "committed"
    return _UNPRINTABLE.sub("", text)[:4000]
