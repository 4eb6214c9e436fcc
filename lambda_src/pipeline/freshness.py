"""How fresh the data behind a report is: the last successful batch of each source (marts.data_freshness)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class SourceFreshness:
    source: str
    last_batch_id: int | None
    last_loaded_at: datetime | None
    rows_loaded: int | None

    def as_dict(self) -> dict:
        return {"source": self.source, "last_batch_id": self.last_batch_id,
                "last_loaded_at": self.last_loaded_at.isoformat() if self.last_loaded_at else None,
                "rows_loaded": self.rows_loaded}


def read_freshness(conn) -> list[SourceFreshness]:
    with conn.cursor() as cur:
        cur.execute("select source, last_batch_id, last_loaded_at, rows_loaded from marts.data_freshness"
                    " order by source")
        return [SourceFreshness(*row) for row in cur.fetchall()]


def freshness_note(rows: list[SourceFreshness], timezone: str) -> str:
    """'Data as of the last successful load of each source: clients 1 Jul 2024 05:02, sales ...'."""
    if not rows:
        return "Data freshness: no source has been loaded yet."
    zone = ZoneInfo(timezone)
    parts = []
    for row in rows:
        if row.last_loaded_at is None:
            parts.append(f"{row.source} never")
        else:
            local = row.last_loaded_at.astimezone(zone)
            parts.append(f"{row.source} {local.day} {local:%b %Y %H:%M}")
    return f"Data as of the last successful load of each source ({timezone}): " + ", ".join(parts)
