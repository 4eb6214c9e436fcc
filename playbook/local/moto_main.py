"""The moto server the local stack runs: moto's own, with its request recorder safe for concurrency.

moto's recorder appends each request to one file from every request thread without a lock, so two
large uploads at once interleave and the recording can no longer be replayed. Recording here takes a
lock, and skips reads (GET, HEAD, OPTIONS), which change nothing and need no replay.
"""

from __future__ import annotations

import sys
import threading

from moto.moto_api._internal.recorder.models import Recorder
from moto.server import main

_lock = threading.Lock()
_record = Recorder._record_request


def _record_safely(self, request, body=None) -> None:
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    with _lock:
        _record(self, request, body)


Recorder._record_request = _record_safely

if __name__ == "__main__":
    main(sys.argv[1:])
