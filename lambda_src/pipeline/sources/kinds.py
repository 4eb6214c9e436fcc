"""The kinds of source, each declared once: how its deliveries arrive, which reader reads them, which function
loads them. A new kind is a line here and its reader module; the configuration, the handlers, the templates,
the backfill and the validation read what they need from this table.

Deliveries arrive as files (objects under the source's landing prefix in S3: the ingest_object function,
started by the bucket's notification or a scheduled sweep, reads each with the kind's reader) or as API
windows (the ingest_api function asks the business system for each window on its schedule). A file kind's
reader takes keyword arguments: path, display, options, columns, table, required.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal

# a dry run's copy of a file (`playbook ingest --dry-run`): dry-run/<the source's prefix><file name>, where no
# landing notification fires
DRY_RUN_PREFIX = "dry-run/"
# an API window's pages as the API sent them: api-pages/<source>/<batch id>/page-00001.json, kept in the landing
# bucket for the independent re-read (validation) and for audit; no notification fires there
API_PAGES_PREFIX = "api-pages/"

Delivers = Literal["files", "api"]


@dataclass(frozen=True)
class SourceKind:
    name: str
    delivers: Delivers
    reader: str  # "module:Class" of its reader, imported when a delivery is read
    handler: str  # the handler of the function that loads it
    what: str  # what such a source is, in a consultant's words

    def reader_class(self) -> type:
        module, _, name = self.reader.partition(":")
        return getattr(importlib.import_module(module), name)


KINDS: dict[str, SourceKind] = {k.name: k for k in (
    SourceKind("s3_csv", "files", "pipeline.sources.s3_csv:CsvReader", "pipeline.handlers.ingest_object.handler",
               "CSV or other delimited text exports dropped in S3"),
    SourceKind("excel", "files", "pipeline.sources.excel:ExcelReader", "pipeline.handlers.ingest_object.handler",
               "Excel workbooks (.xlsx) dropped in S3"),
    SourceKind("rest_api", "api", "pipeline.sources.rest_api:ApiReader", "pipeline.handlers.ingest_api.handler",
               "a business system's REST API, read window by window"),
)}


def source_kind(name: str) -> SourceKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown source kind {name!r}; choose one of {', '.join(KINDS)}") from None
