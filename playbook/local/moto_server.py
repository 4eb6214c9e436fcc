"""moto in server mode: every AWS API the pipeline uses, over HTTP on 127.0.0.1.

moto keeps its state in memory. To survive `down`/`up`, the server (`moto_main`) records every request
it receives but plain reads into the state directory, each drawing its ids from a generator seeded by
its position in the recording; on the next start the playbook replays the recording in order, so
buckets, objects, secrets, stacks and functions come back with the same names and ids.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import requests

from playbook.local.processes import StackError, require_free_port, wait_until

# each recorded request draws its ids from a generator seeded by its position; large bodies are kept by content
# (see moto_main). A recording of the earlier format ("positional-seeds-1", every body inline) replays the same.
RECORDING_FORMAT = "positional-seeds-2"
READABLE_FORMATS = ("positional-seeds-1", RECORDING_FORMAT)
BODIES_DIR = "bodies"


def version() -> str:
    from importlib.metadata import version as dist_version

    return f"moto {dist_version('moto')}"


@dataclass
class MotoServer:
    root: Path  # <state>/moto
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def recording(self) -> Path:
        return self.root / "recording.jsonl"

    @property
    def log_file(self) -> Path:
        return self.root / "moto.log"

    def start(self) -> int:
        require_free_port(self.port, "the moto server", "PLAYBOOK_MOTO_PORT")
        self.root.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MOTO_RECORDER_FILEPATH": str(self.recording)}
        env.pop("MOTO_ENABLE_RECORDING", None)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "playbook.local.moto_main", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,
            )
        try:
            wait_until(lambda: proc.poll() is None and self.healthy(), 30, "the moto server")
        except StackError:
            proc.kill()
            tail = self.log_file.read_text(errors="replace").splitlines()[-5:]
            raise StackError(f"the moto server did not start on port {self.port}: {' | '.join(tail)}") from None
        try:
            self._restore()
        except Exception as exc:  # never leave a server running that the state file does not name
            proc.kill()
            proc.wait(10)
            raise StackError(f"the moto server started but its recorded state could not be restored ({exc}); "
                             f"the recording is {self.recording}: move it aside to start empty") from exc
        return proc.pid

    def healthy(self) -> bool:
        try:
            # the dashboard page, not data.json: serialising the state fails once Lambda functions exist
            return requests.get(f"{self.endpoint}/moto-api/", timeout=2).ok
        except requests.RequestException:
            return False

    def _post(self, path: str) -> None:
        requests.post(f"{self.endpoint}{path}", timeout=10).raise_for_status()

    @property
    def recording_format(self) -> Path:
        return self.root / "recording.format"

    def _restore(self) -> None:
        """Replay what was recorded before, then keep recording."""
        if self.recording.exists():
            fmt = self.recording_format
            if not (fmt.exists() and fmt.read_text().strip() in READABLE_FORMATS):
                print(f"warning: {self.recording} was written by an older moto server whose ids a replay cannot "
                      "reproduce; provisioned stacks may refer to resources that no longer exist. To start moto "
                      "empty, `playbook local down` and move that file aside.", file=sys.stderr)
            replayed, unreadable = replay(self.recording, self.endpoint)
            (self.root / "last_replay.json").write_text(json.dumps({"requests": replayed, "unreadable": unreadable}))
            if unreadable:
                print(f"warning: {unreadable} recorded requests in {self.recording} could not be read and were not "
                      "replayed (written concurrently by an older moto server)", file=sys.stderr)
        if self.recording.exists():
            self.recording.chmod(0o600)  # it holds secrets: an older one may have been written 0644
        # lines from here on may keep their bodies by content: a reader of the older format could not replay them
        self.recording_format.write_text(RECORDING_FORMAT + "\n")
        self._post("/moto-api/recorder/start-recording")

    def delete_data(self) -> None:
        """What moto keeps across `down`/`up` (`local down --delete-data`): the next start is empty."""
        shutil.rmtree(self.root, ignore_errors=True)

    def recording_size(self) -> dict[str, int]:
        """What the recording keeps on disk: its lines, and the large bodies kept once each by content."""
        bodies = [p for p in (self.root / BODIES_DIR).glob("*") if p.is_file()]
        return {"recording_bytes": self.recording.stat().st_size if self.recording.exists() else 0,
                "bodies": len(bodies), "bodies_bytes": sum(p.stat().st_size for p in bodies)}


def replay(recording: Path, endpoint: str) -> tuple[int, int]:
    """Send every request of a recording to the server at `endpoint`, in order: each request's ids depend
    on its position, so none may be skipped.

    Returns (requests replayed, lines that could not be read)."""
    target = urlsplit(endpoint)
    count = unreadable = 0
    with requests.Session() as session, open(recording, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                unreadable += 1
                continue
            if entry.get("body_sha256"):
                body = (recording.parent / BODIES_DIR / entry["body_sha256"]).read_bytes()
            else:
                body = entry.get("body") or b""
                if entry.get("body_encoded"):
                    body = base64.b64decode(body)
            parts = urlsplit(entry["url"])
            url = urlunsplit((target.scheme, target.netloc, parts.path, parts.query, ""))
            headers = {k: v for k, v in (entry.get("headers") or {}).items()
                       if k.lower() not in ("host", "transfer-encoding", "content-length")}
            headers["Host"] = target.netloc
            session.request(entry["method"], url, headers=headers, data=body, timeout=60)
            count += 1
    return count, unreadable
