"""`playbook proxy up | down | status`: the BI proxy on a laptop, Debian's nginx on loopback.

The configuration is infra/nginx/stream.conf.template, the file the EC2 proxy installs, rendered with the
allow-list and the local database as upstream. nginx runs in the foreground (`daemon off`) with its own
prefix, pid file and logs under <state>/proxy/, and is tracked like the other local parts: by pid and
process start time, so `down` stops exactly the process `up` started.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from playbook.errors import PlaybookError

ENV_PROXY_PORT = "PLAYBOOK_PROXY_PORT"
ENV_PROXY_ALLOW = "PLAYBOOK_PROXY_ALLOW"
DEFAULT_PROXY_PORT = 24433
DEFAULT_ALLOW = ["127.0.0.1/32"]
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


def proxy_port() -> int:
    from playbook.settings import _port

    try:
        return _port(ENV_PROXY_PORT, DEFAULT_PROXY_PORT)
    except ValueError as exc:
        raise PlaybookError(str(exc)) from None


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if not found or not STREAM_MODULE.exists():
        raise PlaybookError("the local proxy needs Debian's nginx and its stream module: run `make system-deps` "
                            "(apt-get install nginx libnginx-mod-stream)")
    return found


@dataclass
class LocalProxy:
    root: Path  # <state>/proxy
    port: int

    @property
    def conf(self) -> Path:
        return self.root / "nginx.conf"

    @property
    def state_file(self) -> Path:
        return self.root / "proxy.json"

    @property
    def error_log(self) -> Path:
        return self.root / "error.log"

    def read_state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def running(self, state: dict[str, Any] | None = None) -> bool:
        from playbook.local.processes import process_matches

        state = self.read_state() if state is None else state
        return process_matches(state.get("pid"), state.get("create_time"))

    def render(self, upstream: str, allow: list[str]) -> str:
        from playbook.templates import render_nginx_conf

        return render_nginx_conf(
            listen=f"127.0.0.1:{self.port}", upstream=upstream, allow=allow, stream_module=str(STREAM_MODULE),
            pid_file=str(self.root / "nginx.pid"), error_log=str(self.error_log),
            access_log=str(self.root / "access.log"))

    def _command(self) -> list[str]:
        return [nginx_binary(), "-p", f"{self.root}/", "-c", str(self.conf), "-e", str(self.error_log),
                "-g", "daemon off;"]

    def up(self, upstream: str, allow: list[str]) -> dict[str, Any]:
        from playbook.local.processes import create_time_of, require_free_port
        from playbook.templates import validate_cidrs

        allow = validate_cidrs(allow)
        text = self.render(upstream, allow)
        state = self.read_state()
        if self.running(state):
            if state.get("port") == self.port and self.conf.exists() and self.conf.read_text() == text:
                return self.status()
            self.down()
        require_free_port(self.port, "the BI proxy", ENV_PROXY_PORT)
        self.root.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(text)
        check = subprocess.run([*self._command(), "-t"], capture_output=True, text=True)
        if check.returncode != 0:
            raise PlaybookError(f"nginx rejected {self.conf}: {check.stderr.strip()}")
        with open(self.root / "nginx.out", "ab") as out:
            proc = subprocess.Popen(self._command(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        deadline = time.monotonic() + 15
        while not _listening(self.port):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                tail = self.error_log.read_text(errors="replace").splitlines()[-3:] if self.error_log.exists() else []
                raise PlaybookError(f"nginx did not start on 127.0.0.1:{self.port}: {' | '.join(tail)}")
            time.sleep(0.05)
        self.state_file.write_text(json.dumps({
            "pid": proc.pid, "create_time": create_time_of(proc.pid), "port": self.port, "upstream": upstream,
            "allow": allow, "conf": str(self.conf), "started_at": time.time()}, indent=2))
        return self.status()

    def down(self) -> bool:
        from playbook.local.processes import terminate

        state = self.read_state()
        stopped = False
        if self.running(state):
            stopped = terminate(state["pid"], state.get("create_time"))
        if state:
            self.state_file.unlink(missing_ok=True)
        return stopped

    def status(self) -> dict[str, Any]:
        state = self.read_state()
        running = self.running(state)
        return {"running": running, "healthy": running and _listening(state.get("port", self.port)),
                "listen": f"127.0.0.1:{state.get('port', self.port)}", "pid": state.get("pid") if running else None,
                "upstream": state.get("upstream"), "allow": state.get("allow"), "conf": str(self.conf),
                "error_log": str(self.error_log)}


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def current() -> LocalProxy:
    from playbook.settings import local_settings

    return LocalProxy(local_settings().state_dir / "proxy", proxy_port())


def local_upstream() -> str:
    """host:port of the local database, from `playbook local status`."""
    from playbook.local.stack import current as current_stack

    status = current_stack().status()
    if not status["postgres"]["healthy"]:
        raise PlaybookError("the local database is not running: run `playbook local up` first")
    url = urlsplit(status["database_url"])
    return f"{url.hostname or '127.0.0.1'}:{url.port or 5432}"


# -- CLI -------------------------------------------------------------------------------------------------
def cmd_proxy(args: argparse.Namespace) -> int:
    proxy = current()
    if args.action == "up":
        allow = args.allow_cidr or [c for c in os.environ.get(ENV_PROXY_ALLOW, "").split(",") if c.strip()]
        status = proxy.up(local_upstream(), allow or DEFAULT_ALLOW)
        print(f"BI proxy is up on {status['listen']} -> {status['upstream']} (allow: {', '.join(status['allow'])})")
        print(f"  e.g. psql \"postgresql://<role>@{status['listen']}/playbook\"; log: {status['error_log']}")
        return 0
    if args.action == "down":
        print("BI proxy stopped" if proxy.down() else "BI proxy was not running")
        return 0
    status = proxy.status()
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(f"BI proxy: {'up' if status['healthy'] else 'down'} {status['listen']} -> {status['upstream']}")
    return 0 if status["healthy"] else 3


def register_commands(subparsers) -> None:
    p = subparsers.add_parser("proxy", help="the local BI proxy: nginx on loopback in front of the database")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--allow-cidr", action="append", metavar="CIDR",
                   help=f"client CIDRs admitted (repeatable; default 127.0.0.1/32, or ${ENV_PROXY_ALLOW})")
    p.add_argument("--json", action="store_true", help="status as JSON")
    p.set_defaults(func=cmd_proxy)
