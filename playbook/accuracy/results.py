"""What one validation run found: a result per check and subject, each finding with where it is."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from playbook.errors import PlaybookError


class AccuracyBreach(PlaybookError):
    """A check went beyond its limit: the numbers cannot be trusted yet. Results and report are written first."""

    def __init__(self, message: str, report: ValidationReport):
        super().__init__(message)
        self.report = report


@dataclass
class CheckResult:
    check: str
    subject: str
    status: str  # pass, fail or warn
    observed: int | Decimal | None
    threshold: int | Decimal | None
    summary: str
    findings: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def details(self) -> dict[str, Any]:
        return {"summary": self.summary, "findings": self.findings, **self.extra}


def judge(check: str, subject: str, observed: int | Decimal, threshold: int | Decimal | None, summary: str,
          findings: list[dict[str, Any]] | None = None, warn_only: bool = False, **extra: Any) -> CheckResult:
    """fail when observed exceeds the threshold (warn instead for checks that inform, never stop)."""
    over = observed > (threshold or 0)
    status = ("warn" if warn_only else "fail") if over else "pass"
    return CheckResult(check, subject, status, observed, threshold, summary, findings or [], extra)


@dataclass
class ValidationReport:
    run_id: str
    results: list[CheckResult]
    data_end: str | None = None
    report_path: Path | None = None
    seconds: float = 0.0

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "fail"]

    @property
    def warnings(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "warn"]

    @property
    def passed(self) -> bool:
        return not self.failures

    def by_check(self, check: str) -> list[CheckResult]:
        return [r for r in self.results if r.check == check]

    def result(self, check: str, subject: str) -> CheckResult:
        for r in self.results:
            if r.check == check and r.subject == subject:
                return r
        raise KeyError((check, subject))

    def findings(self, check: str | None = None) -> list[dict[str, Any]]:
        return [f for r in self.results if check in (None, r.check) for f in r.findings]


def place(source_ref: str | None) -> dict[str, Any]:
    """An S3 source ref (s3://bucket/key?versionId=v#sheet) as file, version and sheet a person can open."""
    if not source_ref:
        return {"file": None, "sheet": None}
    ref, _, sheet = source_ref.partition("#")
    parts = urlsplit(ref)
    if parts.scheme != "s3":
        return {"file": ref, "sheet": sheet or None}
    version = parse_qs(parts.query).get("versionId", [None])[0]
    return {"file": parts.path.lstrip("/"), "sheet": sheet or None, "version": version}


_ROW = re.compile(r"^row [0-9]+: ")
_QUOTED = re.compile(r"'(?:[^']|'')*'")
_KEY_VALUE = re.compile(r"\b([a-z_]+)=[^,;]+")
_AT_ROW = re.compile(r"\bat row [0-9]+")


def reason_kind(reason: str) -> str:
    """A quarantine reason without its row and values, so rows with the same fault group together:
    "row 17: amount '12,3O' is not a number" -> "amount ... is not a number"."""
    text = _ROW.sub("", reason)
    text = _QUOTED.sub("...", text)
    text = _KEY_VALUE.sub(r"\1=...", text)
    return _AT_ROW.sub("at row ...", text)
