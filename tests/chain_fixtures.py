"""A stack of its own for the chain: the whole playbook runs on it (a small demo company), so its warehouse holds
exactly what the chain loaded and nothing the other tests leave behind. Shared by the chain and notebook tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import stack_env, state_dir

DEMO = ["-p", "demo", "true", "-p", "demo_years", "1", "-p", "demo_clients", "60", "-p", "grain", "quarter"]
# what the chain's environment must not inherit from the session's own stack
INHERITED = ("AWS_ENDPOINT_URL", "PLAYBOOK_DATABASE_URL", "PLAYBOOK_STACK_PREFIX", "PLAYBOOK_CONFIG")


class ChainStack:
    def __init__(self, env: dict[str, str], reports: Path):
        self.env, self.reports = env, reports

    def playbook(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "playbook", *args], capture_output=True, text=True,
                              timeout=timeout, env=self.env)

    def status(self) -> dict:
        done = self.playbook("local", "status", "--json")
        return json.loads(done.stdout)

    def latest(self) -> Path:
        return (self.reports / "latest").resolve()


@pytest.fixture(scope="session")
def chain_stack() -> Iterator[ChainStack]:
    from playbook.chain import ensure_kernel

    ensure_kernel()
    directory, reports = state_dir(), Path(tempfile.mkdtemp(prefix="playbook-reports-"))
    env = {k: v for k, v in os.environ.items() if k not in INHERITED}
    env.update(stack_env(directory), PLAYBOOK_REPORTS_DIR=str(reports))
    chain = ChainStack(env, reports)
    try:  # a failed `up` may have started a part: `down` stops whatever the state file names
        up = chain.playbook("local", "up")
        assert up.returncode == 0, up.stdout + up.stderr
        yield chain
    finally:
        chain.playbook("local", "down", "--delete-data")
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(reports, ignore_errors=True)


@pytest.fixture(scope="session")
def chained(chain_stack: ChainStack) -> dict:
    """The whole chain, once, on the small demo company."""
    done = chain_stack.playbook("run", "--target", "local", *DEMO)
    assert done.returncode == 0, done.stdout + done.stderr
    return {"run_dir": chain_stack.latest()}


@pytest.fixture(scope="session")
def nbval_run(chained: dict, chain_stack: ChainStack) -> subprocess.CompletedProcess:
    """nbval over every lesson as committed, after the chain ran and before any test seeds a defect into the
    chain's warehouse (the lessons validate with the default limits): those tests request this fixture."""
    from playbook.chain import NOTEBOOKS_DIR
    from playbook.settings import PROJECT_ROOT

    with business_system(chain_stack):  # the lessons run as committed (demo = False): the API is the company's
        return subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q",
                               str(NOTEBOOKS_DIR)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
                              env=chain_stack.env)


@contextmanager
def business_system(chain_stack: ChainStack) -> Iterator[None]:
    """The demo's accounting system serving the chain's company (`playbook demo-api --connect`), as a real
    company's is always up; stopped on the way out, whatever happened."""
    years, clients = DEMO[DEMO.index("demo_years") + 1], DEMO[DEMO.index("demo_clients") + 1]
    server = subprocess.Popen([sys.executable, "-m", "playbook", "demo-api", "--connect", "--years", years,
                               "--clients", clients], env=chain_stack.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        ready = server.stdout.readline()
        assert ready.startswith("demo accounting system at"), ready + server.stderr.read()
        yield
    finally:
        server.terminate()
        server.wait(timeout=30)
