"""Where the playbook keeps its state and which endpoints it talks to.

Everything is overridable from the environment so the same code serves a laptop, CI and a consultant's
AWS account; defaults avoid the ports other tools commonly use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

ENV_STATE_DIR = "PLAYBOOK_STATE_DIR"
ENV_DATABASE_URL = "PLAYBOOK_DATABASE_URL"
ENV_MOTO_PORT = "PLAYBOOK_MOTO_PORT"
ENV_PG_PORT = "PLAYBOOK_PG_PORT"
ENV_CONFIG = "PLAYBOOK_CONFIG"
ENV_REGION = "AWS_DEFAULT_REGION"
ENV_REPORTS_DIR = "PLAYBOOK_REPORTS_DIR"



def names_this_machine(host: str | None) -> bool:
    """Whether a URL's host is this machine: localhost, any loopback address (127.0.0.0/8, ::1, an IPv4-mapped
    one), or 0.0.0.0."""
    import ipaddress

    host = (host or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or address.is_unspecified or bool(mapped and mapped.is_loopback)

# the default ports lie below Linux's ephemeral range (32768-60999), which no outgoing connection takes them from
DEFAULT_MOTO_PORT = 24566
DEFAULT_PG_PORT = 24432
DEFAULT_REGION = "eu-west-2"
DEFAULT_CONFIG = PROJECT_ROOT / "playbook.yaml"


@dataclass(frozen=True)
class LocalSettings:
    """Settings of the local stack, read once from the environment."""

    state_dir: Path
    moto_port: int
    pg_port: int
    region: str
    external_database_url: str | None

    @property
    def state_file(self) -> Path:
        return self.state_dir / "stack.json"


def _port(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a port number") from None
    if not 1024 <= port <= 65535:
        raise ValueError(f"{name}={port} must be between 1024 and 65535")
    return port


def local_settings() -> LocalSettings:
    state_dir = Path(os.environ.get(ENV_STATE_DIR) or PROJECT_ROOT / ".state").resolve()
    return LocalSettings(
        state_dir=state_dir,
        moto_port=_port(ENV_MOTO_PORT, DEFAULT_MOTO_PORT),
        pg_port=_port(ENV_PG_PORT, DEFAULT_PG_PORT),
        region=os.environ.get(ENV_REGION) or DEFAULT_REGION,
        external_database_url=os.environ.get(ENV_DATABASE_URL) or None,
    )


def config_path(explicit: str | os.PathLike | None = None) -> Path:
    """The company configuration file: an explicit path, $PLAYBOOK_CONFIG, or the shipped demo company."""
    return Path(explicit or os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG)


def reports_root() -> Path:
    """Where run folders go: $PLAYBOOK_REPORTS_DIR, else reports/ in the project."""
    return Path(os.environ.get(ENV_REPORTS_DIR) or PROJECT_ROOT / "reports").resolve()
