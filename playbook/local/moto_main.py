"""The moto server the local stack runs: moto's own, made replayable.

moto keeps its state in memory; the local stack survives `down`/`up` by recording the requests the
server receives and replaying them on the next start. A replay only rebuilds the same state if every
request draws the same "random" ids the second time, and moto draws them from one shared generator that
every response also draws its request id from, backends draw from when first touched (an EC2 region
creates its default VPC), and concurrent requests draw from in whatever order threads run. So here:

- every request that is recorded (all but GET, HEAD, OPTIONS and moto's own /moto-api/) takes its place
  in the recording and, with it, a generator of its own seeded from that place: request n draws the same
  ids in the first run and in every replay, whatever ran before or beside it. Requests still run
  concurrently; only taking a place (and appending the line) is serialised, so two large uploads never
  interleave in the file;
- S3 multipart upload ids, which moto takes from os.urandom, come from that generator too, so a replayed
  UploadPart finds the upload its recorded id names.

GET and HEAD requests are neither recorded nor replayed: they only read, and draw from a generator of
their own that nothing recorded depends on.

The recording holds secrets (the roles' passwords in Secrets Manager requests) and every uploaded byte: it is
written readable by its owner only (0600), and a body larger than INLINE_BODY_MAX is kept once by its content,
in `bodies/<sha256>` beside the recording, so the same bytes uploaded again (a file delivered twice, a template
or a function zip sent on every deploy) add a line, not a copy.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import sys
import threading
from typing import Any

from moto.moto_api._internal import mock_random
from moto.moto_api._internal.moto_random import MotoRandom
from moto.moto_api._internal.recorder.models import Recorder
from moto.s3 import models as s3_models
from moto.server import main

from playbook.local.moto_server import BODIES_DIR
from playbook.local.processes import write_private

SEED = 20240601
_READS = ("GET", "HEAD", "OPTIONS")

_lock = threading.Lock()
_position = 0
_local = threading.local()
INLINE_BODY_MAX = 4096  # bytes: a larger request body is kept once by its content (bodies/<sha256>)


def _recorded(method: str, path: str) -> bool:
    return method not in _READS and not path.startswith("/moto-api/")


def _generator() -> random.Random:
    rng = getattr(_local, "rng", None)
    if rng is None:
        rng = _local.rng = random.Random()  # noqa: S311 (ids of an emulator, not secrets)
    return rng


class _PerRequestRandom(MotoRandom):
    """moto's shared generator, drawing from the current request's own (every other draw derives from these)."""

    def random(self) -> float:
        return _generator().random()

    def getrandbits(self, k: int) -> int:
        return _generator().getrandbits(k)

    def seed(self, a: Any = None, version: int = 2) -> None:
        _generator().seed(a, version)


def _request_body(request: Any, body: Any) -> bytes:
    """The request's body, as moto's own recorder reads it (and puts back for the request to read)."""
    if body is None:
        try:
            body = request.environ["wsgi.input"].read(int(request.headers["Content-Length"]))
        except (AttributeError, KeyError, ValueError):
            return b""
        request.environ["wsgi.input"] = io.BytesIO(body.encode() if isinstance(body, str) else body)
    return body.encode() if isinstance(body, str) else bytes(body or b"")


def _append(self: Recorder, request: Any, body: Any) -> None:
    """One line of the recording (moto's layout), a large body kept once by its content beside it."""
    if not self._user_enabled or request.raw_path.startswith("/moto-api/recorder/"):
        return
    data = _request_body(request, body)
    entry: dict[str, Any] = {"headers": dict(request.headers), "method": request.method, "url": request.raw_url}
    if len(data) > INLINE_BODY_MAX:
        digest = hashlib.sha256(data).hexdigest()
        stored = os.path.join(os.path.dirname(self._location), BODIES_DIR, digest)
        if not os.path.exists(stored):
            os.makedirs(os.path.dirname(stored), mode=0o700, exist_ok=True)
            write_private(stored + ".tmp", data)
            os.replace(stored + ".tmp", stored)
        entry.update(body_sha256=digest)
    else:
        text, encoded = self._encode_body(data)
        entry.update(body=text, body_encoded=encoded)
    write_private(self._location, json.dumps(entry) + "\n", append=True)


def _take_place(self: Recorder, request: Any, body: Any = None) -> None:
    """Called by moto as each request starts: its place in the recording fixes the ids it will draw."""
    global _position
    if not _recorded(request.method, request.path):
        _local.rng = random.Random()  # noqa: S311
        return
    with _lock:
        _append(self, request, body)  # appends only while recording (not during a replay)
        _local.rng = random.Random(SEED * 1_000_003 + _position)  # noqa: S311
        _position += 1


class _SeededUploadIds:
    """Stands in for `os` inside moto.s3.models: urandom comes from the request's seeded generator."""

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    @staticmethod
    def urandom(size: int) -> bytes:
        return _generator().getrandbits(8 * size).to_bytes(size, "big") if size else b""


mock_random.__class__ = _PerRequestRandom
Recorder._record_request = _take_place
s3_models.os = _SeededUploadIds()

if __name__ == "__main__":
    main(sys.argv[1:])
