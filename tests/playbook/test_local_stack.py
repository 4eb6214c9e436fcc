"""`playbook local up | status | down` as a consultant uses it: through the CLI, on its own ports."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import boto3
import psutil
import psycopg2
import pytest

from tests.conftest import stack_env, state_dir


def playbook(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "playbook", *args], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=180)
    if check and result.returncode != 0:
        raise AssertionError(f"playbook {' '.join(args)} failed: {result.stdout}\n{result.stderr}")
    return result


def status(env: dict) -> dict:
    return json.loads(playbook(env, "local", "status", "--json", check=False).stdout)


@pytest.fixture()
def own_env():
    directory = state_dir()
    env = stack_env(directory / "state")
    env.pop("PLAYBOOK_DATABASE_URL", None)
    yield env
    playbook(env, "local", "down", "--force", "--delete-data", check=False)
    shutil.rmtree(directory, ignore_errors=True)


def recorded_bodies(recording: Path) -> str:
    """Every request body the recording holds inline, decoded."""
    import base64

    bodies = []
    for line in recording.read_text().splitlines():
        entry = json.loads(line)
        body = entry.get("body") or ""
        bodies.append(base64.b64decode(body).decode(errors="replace") if entry.get("body_encoded") else body)
    return "\n".join(bodies)


def pids_of(st: dict) -> set[int]:
    return {p for p in (st["moto"].get("pid"), st["postgres"].get("pid")) if p}


def test_up_twice_is_one_stack_and_down_stops_it_and_data_persists(own_env):
    playbook(own_env, "local", "up")
    first = status(own_env)
    playbook(own_env, "local", "up")
    second = status(own_env)
    assert first["healthy"] and second["healthy"]
    assert pids_of(first) == pids_of(second), "a second up must reuse the healthy stack"

    # the printed endpoints work: psql reads the database, boto3 lists buckets
    out = subprocess.run(["psql", second["database_url"], "-Atc", "select 1"], capture_output=True, text=True)
    assert out.stdout.strip() == "1", out.stderr
    aws = dict(endpoint_url=second["aws_endpoint_url"], region_name="eu-west-2",
               aws_access_key_id="testing", aws_secret_access_key="testing")
    s3 = boto3.client("s3", **aws)
    s3.create_bucket(Bucket="landing", CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    s3.put_object(Bucket="landing", Key="landing/sales/day 1.csv", Body=b"a,b\n1,2\n")
    password = f"pw-{os.urandom(8).hex()}"
    secret_arn = boto3.client("secretsmanager", **aws).create_secret(
        Name="db", SecretString=json.dumps({"password": password}))["ARN"]
    with psycopg2.connect(second["database_url"]) as conn, conn.cursor() as cur:
        cur.execute("create table kept (n int); insert into kept values (42)")

    # every state file that holds a secret is its owner's alone: the owner's database URL, the passwords, and
    # the recording of every request (the secrets' values among them)
    state = Path(own_env["PLAYBOOK_STATE_DIR"])
    for kept in (state / "stack.json", state / "pg" / "credentials.json", state / "moto" / "recording.jsonl"):
        assert kept.stat().st_mode & 0o077 == 0, f"{kept} is {oct(kept.stat().st_mode & 0o777)}"
    assert password in recorded_bodies(state / "moto" / "recording.jsonl")  # a secret's value, kept there

    playbook(own_env, "local", "down")
    for pid in pids_of(second):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not status(own_env)["healthy"]

    playbook(own_env, "local", "up")
    third = status(own_env)
    assert third["healthy"] and pids_of(third).isdisjoint(pids_of(second))
    with psycopg2.connect(third["database_url"]) as conn, conn.cursor() as cur:
        cur.execute("select n from kept")
        assert cur.fetchall() == [(42,)]
    s3 = boto3.client("s3", **aws)
    assert s3.get_object(Bucket="landing", Key="landing/sales/day 1.csv")["Body"].read() == b"a,b\n1,2\n"
    assert boto3.client("secretsmanager", **aws).describe_secret(SecretId="db")["ARN"] == secret_arn


def test_a_dead_part_is_restarted(own_env):
    playbook(own_env, "local", "up")
    before = status(own_env)
    psutil.Process(before["moto"]["pid"]).kill()
    playbook(own_env, "local", "up")
    after = status(own_env)
    assert after["healthy"]
    assert after["moto"]["pid"] != before["moto"]["pid"]
    assert after["postgres"]["pid"] == before["postgres"]["pid"]


def test_busy_port_is_a_clear_error(own_env):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(own_env["PLAYBOOK_MOTO_PORT"])))
        squatter.listen()
        result = playbook(own_env, "local", "up", check=False)
    assert result.returncode == 2
    assert f"port {own_env['PLAYBOOK_MOTO_PORT']}" in result.stderr
    assert "PLAYBOOK_MOTO_PORT" in result.stderr


def test_unreadable_state_file_says_what_to_do(own_env):
    state = Path(own_env["PLAYBOOK_STATE_DIR"]) / "stack.json"
    state.parent.mkdir(parents=True)
    state.write_text("{not json")
    result = playbook(own_env, "local", "up", check=False)
    assert result.returncode == 2
    assert str(state) in result.stderr and "playbook local down --force" in result.stderr
    playbook(own_env, "local", "down", "--force")
    playbook(own_env, "local", "up")
    assert status(own_env)["healthy"]


def test_stale_state_naming_a_foreign_process_is_not_killed(own_env):
    """A state file left by a crash may name a pid now used by someone else: never kill it."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        state = Path(own_env["PLAYBOOK_STATE_DIR"]) / "stack.json"
        state.parent.mkdir(parents=True)
        state.write_text(json.dumps({"version": 1, "parts": {
            "moto": {"pid": bystander.pid, "create_time": 1.0, "port": int(own_env["PLAYBOOK_MOTO_PORT"])},
            "postgres": {"pid": bystander.pid, "create_time": 1.0, "port": int(own_env["PLAYBOOK_PG_PORT"])},
        }}))
        assert not status(own_env)["healthy"]
        playbook(own_env, "local", "up")
        assert status(own_env)["healthy"]
        playbook(own_env, "local", "down")
        assert bystander.poll() is None, "down must stop only the processes it started"
    finally:
        bystander.kill()


def test_status_json_has_the_contract_keys(stack):
    assert stack["database_url"].startswith("postgresql://")
    assert stack["aws_endpoint_url"].startswith("http://127.0.0.1:")


def _described(aws: dict) -> dict:
    cfn, ec2 = boto3.client("cloudformation", **aws), boto3.client("ec2", **aws)
    return {
        "stacks": sorted((s["StackName"], s["StackId"], s["StackStatus"]) for s in cfn.describe_stacks()["Stacks"]),
        "resources": sorted(sorted(r.items()) for s in cfn.describe_stacks()["Stacks"]
                            for r in cfn.describe_stack_resources(StackName=s["StackName"])["StackResources"]),
        "subnets": sorted(s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]),
        "security_groups": sorted(g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]),
    }


def test_provisioned_stacks_and_concurrent_uploads_survive_down_and_up(own_env, tmp_path):
    """Replay rebuilds the same ids, so the replayed stacks still refer to their own subnets and groups, a
    second provision finds nothing to change; objects uploaded at once, and one in concurrent parts, come back
    whole (the recorder writes one request at a time, so the recording stays readable)."""
    from concurrent.futures import ThreadPoolExecutor

    from boto3.s3.transfer import TransferConfig

    playbook(own_env, "local", "up")
    playbook(own_env, "provision", "--target", "local")
    st = status(own_env)
    aws = dict(endpoint_url=st["aws_endpoint_url"], region_name="eu-west-2",
               aws_access_key_id="testing", aws_secret_access_key="testing")
    big = tmp_path / "big.csv"
    big.write_bytes(os.urandom(12 * 1024 * 1024))
    bucket = boto3.client("s3", **aws).list_buckets()["Buckets"][0]["Name"]
    boto3.client("s3", **aws).upload_file(str(big), bucket, "landing/big.csv", Config=TransferConfig(
        multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024, max_concurrency=3))
    s3 = boto3.client("s3", **aws)
    bodies = {f"landing/sales/part-{i:02d}.csv": os.urandom(256 * 1024) for i in range(24)}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: s3.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), bodies.items()))
    before = _described(aws)
    # the same bytes delivered again (a re-sent file) add a line to the recording, not a second copy
    kept = status(own_env)["moto"]["recording"]
    s3.put_object(Bucket=bucket, Key="landing/sales/part-00 (resent).csv", Body=bodies["landing/sales/part-00.csv"])
    bodies["landing/sales/part-00 (resent).csv"] = bodies["landing/sales/part-00.csv"]
    again = status(own_env)["moto"]["recording"]
    assert again["bodies"] == kept["bodies"] >= 24 and again["bodies_bytes"] == kept["bodies_bytes"]
    assert 0 < again["recording_bytes"] - kept["recording_bytes"] < 8 * 1024
    stored = Path(own_env["PLAYBOOK_STATE_DIR"]) / "moto" / "bodies"
    assert all(p.stat().st_mode & 0o077 == 0 for p in stored.iterdir())
    assert "MiB recorded" in playbook(own_env, "local", "status").stdout

    playbook(own_env, "local", "down")
    playbook(own_env, "local", "up")
    assert _described(aws) == before
    s3 = boto3.client("s3", **aws)
    assert s3.get_object(Bucket=bucket, Key="landing/big.csv")["Body"].read() == big.read_bytes()
    for key, body in bodies.items():
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body, key
    replayed = json.loads((Path(own_env["PLAYBOOK_STATE_DIR"]) / "moto" / "last_replay.json").read_text())
    assert replayed["unreadable"] == 0
    again = playbook(own_env, "provision", "--target", "local")
    assert "changes: none" in again.stdout, again.stdout


def stack_processes() -> set[tuple[int, float]]:
    """Every moto server, PostgreSQL server and TLS front of a playbook stack on this machine."""
    found = set()
    for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
        line = " ".join(proc.info["cmdline"] or [])
        if "playbook.local.moto_main" in line or "playbook.local.tls" in line or \
                ("postgres -D" in line and "pginstall" in line):
            found.add((proc.info["pid"], proc.info["create_time"]))
    return found


PLANTED = {
    "in_the_test": "def test_fails_on_the_stack(stack):\n    assert stack['healthy'] and False, 'planted failure'\n",
    "in_the_stack_s_setup": "import playbook.database\n\n\ndef refuse(url):\n    raise RuntimeError('planted failure')"
                            "\n\n\nplaybook.database.migrate = refuse\n\n\ndef test_never_runs(stack):\n    pass\n",
}


@pytest.mark.parametrize("where", sorted(PLANTED))
def test_a_failing_stack_test_leaves_no_process_behind(tmp_path, where):
    """A test that fails on the session's stack, or whose stack fails after `up` (its migration), stops every
    process its stack started."""
    from playbook.settings import PROJECT_ROOT

    (tmp_path / "test_planted.py").write_text(PLANTED[where])
    env = {k: v for k, v in os.environ.items() if k not in ("PLAYBOOK_TEST_STACK_DIR", "PLAYBOOK_DATABASE_URL")}
    before = stack_processes()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
                           "--rootdir", str(tmp_path), str(tmp_path / "test_planted.py")], cwd=PROJECT_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "planted failure" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    assert stack_processes() - before == set()


def test_default_ports_are_outside_the_ephemeral_range_and_a_time_wait_does_not_hold_one():
    """No outgoing connection can take a default port (its TIME-WAIT would hold it from any server); a port
    whose server's last connection waits in TIME-WAIT is free to the next server, which binds with SO_REUSEADDR
    as moto's and PostgreSQL's do, and `local up` judges it the same way."""
    from playbook.local.processes import port_is_free
    from playbook.proxy import DEFAULT_PROXY_PORT
    from playbook.settings import DEFAULT_MOTO_PORT, DEFAULT_PG_PORT

    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    assert not [p for p in (DEFAULT_MOTO_PORT, DEFAULT_PG_PORT, DEFAULT_PROXY_PORT) if low <= p <= high]
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server does
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        served, _ = listener.accept()
        served.close()  # the server side closes first: its end of the connection waits in TIME-WAIT
        client.close()
    waiting = [c for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port
               and c.status == psutil.CONN_TIME_WAIT]
    assert waiting and port_is_free(port)


@pytest.mark.skipif(os.geteuid() != 0, reason="as root only: the embedded PostgreSQL then runs as its own user")
def test_as_root_a_stack_under_a_directory_no_one_else_may_enter_starts_and_changes_no_mode(tmp_path):
    """A clone under /root (0700): PostgreSQL refuses root, and its system user may not enter the directory. The
    stack starts anyway, from binaries and data kept where that user may go; the user's directories keep their
    modes, the credentials their 0600."""
    from tests.conftest import free_port

    locked = tmp_path / "home"
    locked.mkdir(mode=0o700)
    env = {"PLAYBOOK_STATE_DIR": str(locked / "clone" / ".state"), "PLAYBOOK_MOTO_PORT": str(free_port()),
           "PLAYBOOK_PG_PORT": str(free_port()), "AWS_DEFAULT_REGION": "eu-west-2"}
    modes = {p: p.stat().st_mode for p in (locked, tmp_path)}
    try:
        playbook(env, "local", "up")
        up = status(env)
        assert up["healthy"] and not up["postgres"]["data_dir"].startswith(str(locked))
        done = subprocess.run(["psql", up["database_url"], "-Atc", "select current_user"], capture_output=True,
                              text=True)
        assert done.stdout.strip() == "playbook_owner", done.stderr
        assert {p: p.stat().st_mode for p in modes} == modes
        assert (locked / "clone" / ".state" / "pg" / "credentials.json").stat().st_mode & 0o077 == 0
        # down keeps the data where it is; --delete-data deletes it there too
        playbook(env, "local", "down")
        assert Path(up["postgres"]["data_dir"], "PG_VERSION").exists()
    finally:
        playbook(env, "local", "down", "--force", "--delete-data", check=False)
    assert not Path(up["postgres"]["data_dir"]).exists()
