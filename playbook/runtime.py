"""The local Lambda runtime: `playbook invoke FUNCTION` runs the *deployed* function, from its deployed zip.

The function's configuration (handler, environment, timeout, memory size, code) comes from the Lambda
API. Its zip is fetched from where the API says the code is, checked against the deployed CodeSha256 and
unpacked once into a cache keyed by that hash (`<state dir>/runtime/code/<sha256>/`). A handler runs in a
subprocess of its own (playbook/lambda_bootstrap.py) whose sys.path is the unpacked zip, then the dependency
layer, then the standard library: `pipeline` is the deployed code and `playbook` cannot be imported. As on
Lambda, that process is an execution environment: the first invocation pays the cold start (importing the
handler, reported as Init Duration), and later invocations of the same code and configuration from this
process reuse it while it is warm (module-level caches and /tmp included). An environment that timed out,
ran out of memory or crashed is discarded; one idle longer than IDLE_TTL_S is shut down when the next
invocation looks for one, and every idle one when the invoking process exits.
Locally the layer is the dependencies built for this machine, the playbook's own site-packages (read
without their `.pth` files, so the editable install of this repository stays out).

Limits are enforced as Lambda enforces them: the handler is killed at its timeout ("Task timed out after
N seconds"), and at its memory size. Memory is watched, not capped: RLIMIT_AS counts address space, which
numpy, pandas and glibc's arenas reserve far beyond what they touch, so it kills healthy handlers. Instead
the process tree's resident memory is sampled every 50 ms (psutil, and the kernel's high-water mark
VmHWM of the handler process) and the tree is killed past the limit; the handler process reports its own
VmHWM when it ends, so a spike between two samples is still reported as Runtime.OutOfMemory, as Lambda's
cgroup would have stopped it. (wait4's ru_maxrss is no use here: it counts the parent's pages the child
shared between fork and exec.)
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import hashlib
import io
import json
import os
import select
import shutil
import signal
import sysconfig
import tempfile
import threading
import time
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from playbook.errors import PlaybookError

BOOTSTRAP = Path(__file__).with_name("lambda_bootstrap.py")
POLL_S = 0.05
INIT_TIMEOUT_S = 10  # Lambda's limit on a function's init phase (importing the handler)
STATUSES = ("ok", "error", "timeout", "out_of_memory")


@dataclass
class InvokeResult:
    """One invocation, as Lambda reports it: a payload, or {"errorType", "errorMessage", "stackTrace"}."""

    function_name: str
    request_id: str
    status: str  # ok | error | timeout | out_of_memory
    payload: Any = None
    error: dict[str, Any] | None = None
    duration_ms: float = 0.0
    billed_ms: int = 0
    init_ms: float | None = None
    memory_mb: int = 0
    max_rss_mb: float = 0.0
    log_path: str = ""
    code_sha256: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DeployedFunction:
    """What the Lambda API says about one function: everything the runtime needs to run it."""

    name: str
    arn: str
    version: str
    handler: str
    runtime: str
    timeout_s: int
    memory_mb: int
    environment: dict[str, str]
    code_sha256: str  # base64, as the API gives it
    code_location: str
    code_dir: Path | None = field(default=None, repr=False)


# -- the deployed configuration and code ------------------------------------------------------------------
def runtime_dir() -> Path:
    from playbook.settings import local_settings

    return local_settings().state_dir / "runtime"


def describe(function_name: str) -> DeployedFunction:
    import boto3
    from botocore.exceptions import ClientError

    try:
        got = boto3.client("lambda").get_function(FunctionName=function_name)
    except ClientError as exc:
        raise PlaybookError(f"function {function_name}: {exc.response['Error'].get('Message', exc)}") from None
    conf, code = got["Configuration"], got.get("Code") or {}
    if conf.get("PackageType", "Zip") != "Zip" or "Location" not in code:
        raise PlaybookError(f"function {function_name} is not a zip package: the local runtime runs zips only")
    return DeployedFunction(
        name=conf["FunctionName"], arn=conf["FunctionArn"], version=conf.get("Version", "$LATEST"),
        handler=conf["Handler"], runtime=conf.get("Runtime", ""), timeout_s=int(conf.get("Timeout", 3)),
        memory_mb=int(conf.get("MemorySize", 128)),
        environment={k: str(v) for k, v in ((conf.get("Environment") or {}).get("Variables") or {}).items()},
        code_sha256=conf["CodeSha256"], code_location=code["Location"])


def _sha_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _emulated_code_key(location: str) -> str | None:
    """moto names the code `https://awslambda-<region>-tasks.s3...amazonaws.com/<S3 key>` without serving it."""
    parts = urlsplit(location)
    if os.environ.get("AWS_ENDPOINT_URL") and (parts.hostname or "").startswith("awslambda-") and not parts.query:
        return unquote(parts.path.lstrip("/"))
    return None


def fetch_code(fn: DeployedFunction) -> bytes:
    """The deployed zip's bytes, verified against the deployed CodeSha256.

    On AWS the location is a presigned URL. The local emulator gives the object's key but not its bucket:
    the artifact bucket (stack outputs) is tried first, then every bucket; the hash decides.
    """
    key = _emulated_code_key(fn.code_location)
    if key is None:
        import requests

        response = requests.get(fn.code_location, timeout=60)
        response.raise_for_status()
        candidates = [response.content]
    else:
        candidates = _objects_named(key)
    for data in candidates:
        if _sha_b64(data) == fn.code_sha256:
            return data
    raise PlaybookError(f"function {fn.name}: no code matching its CodeSha256 {fn.code_sha256} at "
                        f"{fn.code_location}")


def _objects_named(key: str):
    import boto3
    from botocore.exceptions import ClientError

    s3 = boto3.client("s3")
    buckets: list[str] = []
    try:
        from playbook.targets import LocalTarget

        buckets.append(LocalTarget().outputs(parts=("storage",))["ArtifactBucketName"])
    except (PlaybookError, KeyError):
        pass
    buckets += [b["Name"] for b in s3.list_buckets().get("Buckets", []) if b["Name"] not in buckets]
    for bucket in buckets:
        try:
            yield s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError:
            continue


def unpack(fn: DeployedFunction) -> Path:
    """The deployed zip unpacked under the runtime's cache, once per code hash."""
    digest = base64.b64decode(fn.code_sha256).hex()
    target = runtime_dir() / "code" / digest
    if (target / ".complete").exists():
        return target
    data = fetch_code(fn)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=target.parent))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        zf.extractall(tmp)  # extractall refuses absolute paths and `..`
    (tmp / ".complete").write_text(fn.code_sha256 + "\n")
    try:
        tmp.rename(target)
    except OSError:  # another invocation unpacked the same code first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def layer_paths() -> list[str]:
    """The dependency layer locally: this machine's site-packages, as plain directories (no .pth files)."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def prepare(function_name: str) -> DeployedFunction:
    fn = describe(function_name)
    fn.code_dir = unpack(fn)
    return fn


# -- one invocation -----------------------------------------------------------------------------------------
def _environment(fn: DeployedFunction, request_id: str, log_stream: str, tmp_dir: Path) -> dict[str, str]:
    # the local endpoint settings of the invoking process (activated: the local stack's), as the function's
    # own credentials and region would be on Lambda
    local = {k: os.environ[k] for k in LOCAL_SETTINGS if os.environ.get(k)}
    region = local.get("AWS_REGION") or local.get("AWS_DEFAULT_REGION", "")
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "en_US.UTF-8", "TZ": ":UTC",
        "TMPDIR": str(tmp_dir), "HOME": str(tmp_dir), "MPLCONFIGDIR": str(tmp_dir / "matplotlib"),
        "LAMBDA_TASK_ROOT": str(fn.code_dir), "_HANDLER": fn.handler,
        "AWS_EXECUTION_ENV": f"AWS_Lambda_{fn.runtime}", "AWS_REGION": region, "AWS_DEFAULT_REGION": region,
        "AWS_LAMBDA_FUNCTION_NAME": fn.name, "AWS_LAMBDA_FUNCTION_VERSION": fn.version,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(fn.memory_mb), "AWS_LAMBDA_FUNCTION_TIMEOUT": str(fn.timeout_s),
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{fn.name}", "AWS_LAMBDA_LOG_STREAM_NAME": log_stream,
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand", "AWS_LAMBDA_REQUEST_ID": request_id,
        **fn.environment, **local,
    }


LOCAL_SETTINGS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                  "AWS_DEFAULT_REGION", "AWS_REGION")


def high_water_mark(pid: int | str = "self") -> int:
    """The kernel's peak resident set of a process (VmHWM, bytes), 0 where /proc does not say."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _tree_rss(root) -> int:
    import psutil

    total = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


def _kill_tree(proc, root) -> None:
    import psutil

    try:
        children = root.children(recursive=True)
    except psutil.Error:
        children = []
    for p in [root, *children]:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            continue
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)


def _log_path(logs: Path, function_name: str, request_id: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    path = logs / function_name / f"{stamp}-{request_id}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def runtime_logs_dir() -> Path:
    from playbook.settings import local_settings

    return local_settings().state_dir / "logs"


IDLE_LIMIT = 8  # warm environments kept, over all functions
IDLE_TTL_S = 300  # an environment idle this long is shut down


class _Environment:
    """One handler process serving invocations of one function configuration, as a Lambda execution
    environment does: imported once (the cold start), then reused while it stays healthy."""

    def __init__(self, fn: DeployedFunction, key: str, request_id: str, first_log: Path, check_only: bool):
        import subprocess
        import sys

        import psutil

        self.key = key
        # one log stream per environment, named (as Lambda does) with an id of its own
        self.log_stream = f"{datetime.now(UTC):%Y/%m/%d}/[{fn.version}]{uuid.uuid4().hex}"
        self.work = Path(tempfile.mkdtemp(prefix="env-", dir=runtime_dir()))
        tmp_dir = self.work / "tmp"  # the function's /tmp: kept between the invocations it serves
        tmp_dir.mkdir()
        spec = {"code_dir": str(fn.code_dir), "layer_paths": layer_paths(), "handler": fn.handler,
                "function_name": fn.name, "function_version": fn.version, "invoked_function_arn": fn.arn,
                "memory_mb": fn.memory_mb, "timeout_s": fn.timeout_s, "log_group_name": f"/aws/lambda/{fn.name}",
                "log_stream_name": self.log_stream, "check_only": check_only}
        (self.work / "spec.json").write_text(json.dumps(spec))
        self.read_fd, write_fd = os.pipe()
        self.buffer = b""
        self.idle_since = 0.0
        with open(first_log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(BOOTSTRAP), str(self.work / "spec.json"), str(write_fd)],
                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, pass_fds=(write_fd,),
                env=_environment(fn, request_id, self.log_stream, tmp_dir), cwd=fn.code_dir,
                start_new_session=True)
        os.close(write_fd)
        self.root = psutil.Process(self.proc.pid)
        self.exited = False

    def send(self, invocation: dict) -> None:
        self.proc.stdin.write((json.dumps(invocation) + "\n").encode())
        self.proc.stdin.flush()

    def messages(self, timeout: float) -> tuple[list[dict], bool]:
        """What the handler process said within `timeout` seconds, and whether its pipe closed."""
        ready, _, _ = select.select([self.read_fd], [], [], timeout)
        if not ready:
            return [], False
        chunk = os.read(self.read_fd, 1 << 16)
        self.buffer += chunk
        out = []
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            out.append(json.loads(line))
        return out, not chunk

    def alive(self) -> bool:
        if not self.exited:
            pid, status = os.waitpid(self.proc.pid, os.WNOHANG)
            if pid:
                self.exited = True
                self.proc.returncode = os.waitstatus_to_exitcode(status)
        return not self.exited

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        if self.alive():
            _kill_tree(self.proc, self.root)
            with contextlib.suppress(ChildProcessError):
                self.proc.wait(5)
        with contextlib.suppress(OSError):
            os.close(self.read_fd)
        shutil.rmtree(self.work, ignore_errors=True)


class _Pool:
    """Warm environments between invocations, keyed by everything that shapes one (code, configuration, the
    endpoints of the invoking process); shut down when idle too long, when too many, and at exit."""

    def __init__(self):
        self.lock = threading.Lock()
        self.idle: list[_Environment] = []

    def take(self, key: str) -> _Environment | None:
        with self.lock:
            self._expire()
            for env in reversed(self.idle):
                if env.key == key:
                    self.idle.remove(env)
                    return env
        return None

    def give(self, env: _Environment) -> None:
        env.idle_since = time.monotonic()
        with self.lock:
            self.idle.append(env)
            surplus = self.idle[:-IDLE_LIMIT]
            del self.idle[:-IDLE_LIMIT]
        for old in surplus:
            old.close()

    def _expire(self) -> None:
        now = time.monotonic()
        expired = [e for e in self.idle if now - e.idle_since > IDLE_TTL_S or not e.alive()]
        for env in expired:
            self.idle.remove(env)
            env.close()

    def shutdown(self) -> None:
        with self.lock:
            envs, self.idle = self.idle, []
        for env in envs:
            env.close()


_pool = _Pool()
atexit.register(_pool.shutdown)


def shutdown_environments() -> None:
    """Stop every warm handler process (the next invocation of each function is a cold start again)."""
    _pool.shutdown()


def _environment_key(fn: DeployedFunction) -> str:
    shape = {"fn": asdict(fn), "local": {k: os.environ.get(k) for k in LOCAL_SETTINGS}, "layers": layer_paths()}
    return hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode()).hexdigest()


def _run(fn: DeployedFunction, event: Any, *, log_dir: Path | None, check_only: bool = False,
         fresh: bool = False) -> InvokeResult:
    import sys

    key = _environment_key(fn)
    request_id = str(uuid.uuid4())
    log_path = _log_path(Path(log_dir) if log_dir else runtime_logs_dir(), fn.name, request_id)
    with open(log_path, "ab") as log:  # START first: the environment's own output follows it
        log.write(f"START RequestId: {request_id} Version: {fn.version} (handler {fn.handler}, runtime "
                  f"{fn.runtime} run by the local Python {sys.version.split()[0]})\n".encode())
    started = time.monotonic()
    runtime_dir().mkdir(parents=True, exist_ok=True)
    event_file = runtime_dir() / f"event-{request_id}.json"
    event_file.write_text(json.dumps(event))
    invocation = {"request_id": request_id, "event_file": str(event_file), "log_file": str(log_path)}
    env = None if (check_only or fresh) else _pool.take(key)
    if env is not None:
        try:
            env.send(invocation)
        except OSError:  # a warm environment that ended since: a cold one instead
            env.close()
            env = None
    cold = env is None
    if cold:
        env = _Environment(fn, key, request_id, log_path, check_only)
        if not check_only:
            env.send(invocation)
    handler_at: float | None = None if cold else started
    result = InvokeResult(fn.name, request_id, "error", memory_mb=fn.memory_mb, log_path=str(log_path),
                          code_sha256=fn.code_sha256)
    limit = fn.memory_mb * 1024 * 1024
    deadline = started + (INIT_TIMEOUT_S if cold else fn.timeout_s + 1)
    init_at: float | None = None
    peak, killed, outcome = 0, None, None
    messages: list[dict] = []
    while outcome is None:
        got, closed = env.messages(POLL_S)
        for message in got:
            messages.append(message)
            if "init_done" in message:
                init_at = time.monotonic()
                deadline = init_at + fn.timeout_s + 1  # until the handler says it started
            if "started" in message:
                handler_at = time.monotonic()
                deadline = handler_at + fn.timeout_s
            if {"result", "result_json", "error"} & set(message):
                outcome = message
        if outcome is not None:
            break
        if closed or not env.alive():
            break  # the process is gone (or closed its pipe): no outcome will come
        peak = max(peak, _tree_rss(env.root))
        if handler_at is not None or cold:  # a warm environment resets its high-water mark as it starts
            peak = max(peak, high_water_mark(env.proc.pid))
        if peak > limit:
            killed = "out_of_memory"
        elif time.monotonic() > deadline:
            killed = "timeout"
        if killed:
            _kill_tree(env.proc, env.root)
            break
    ended = time.monotonic()
    event_file.unlink(missing_ok=True)
    peak = max([peak, *(int(m.get("hwm", 0)) for m in messages)])
    handler_started = handler_at or init_at or started
    result.duration_ms = round((ended - handler_started) * 1000, 2)
    result.init_ms = round((init_at - started) * 1000, 2) if (cold and init_at is not None) else None
    result.billed_ms = max(1, int(-(-result.duration_ms // 1)))
    result.max_rss_mb = round(peak / (1024 * 1024), 1)
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if killed == "timeout":
        seconds = fn.timeout_s if (init_at is not None or not cold) else INIT_TIMEOUT_S
        result.status = "timeout"
        result.error = {"errorMessage": f"{when} {request_id} Task timed out after {seconds:.2f} seconds",
                        "errorType": "Sandbox.Timedout", "stackTrace": []}
    elif killed == "out_of_memory" or peak > limit:
        result.status = "out_of_memory"
        result.error = {"errorMessage": f"RequestId: {request_id} Error: Runtime exited with error: signal: "
                                        f"killed (out of memory: {result.max_rss_mb:.0f} MB used of "
                                        f"{fn.memory_mb} MB)",
                        "errorType": "Runtime.OutOfMemory", "stackTrace": []}
    elif outcome is None:
        env.alive()
        code = env.proc.returncode
        result.error = {"errorMessage": f"RequestId: {request_id} Error: Runtime exited with error: "
                                        f"exit status {code}", "errorType": "Runtime.ExitError", "stackTrace": []}
    elif "error" in outcome:
        result.error = outcome["error"]
    else:
        result.status = "ok"
        result.payload = json.loads(outcome["result_json"]) if "result_json" in outcome else outcome["result"]
    with open(log_path, "ab") as log:
        if result.error:
            log.write((json.dumps(result.error) + "\n").encode())
        log.write(f"END RequestId: {request_id}\nREPORT RequestId: {request_id}\tDuration: {result.duration_ms:.2f} "
                  f"ms\tBilled Duration: {result.billed_ms} ms\tMemory Size: {fn.memory_mb} MB\tMax Memory Used: "
                  f"{result.max_rss_mb:.0f} MB".encode()
                  + (f"\tInit Duration: {result.init_ms:.2f} ms" if result.init_ms is not None else "").encode()
                  + f"\tStatus: {result.status}\n".encode())
    # a handler's own error leaves the environment as it was (Lambda keeps it); anything else ends it
    if killed or outcome is None or check_only or fresh or (cold and init_at is None) or not env.alive():
        env.close()
    else:
        _pool.give(env)
    return result


def invoke(function_name: str, event: Any = None, *, log_dir: Path | None = None,
           deployed: DeployedFunction | None = None, fresh: bool = False) -> InvokeResult:
    """Run the deployed function once (RequestResponse) on this machine and return what Lambda would.

    A warm environment of the same function is reused when one is idle; `fresh` forces a cold start in an
    environment used for this invocation only."""
    require_local_endpoint()
    fn = deployed or prepare(function_name)
    return _run(fn, {} if event is None else event, log_dir=log_dir, fresh=fresh)


def check_handler(function_name: str) -> InvokeResult:
    """Import the deployed handler in a handler process without calling it (payload: where things came from)."""
    require_local_endpoint()
    return _run(prepare(function_name), {}, log_dir=None, check_only=True)


def invoke_many(function_name: str, events: list[Any], concurrency: int = 2, *, progress: bool = False,
                log_dir: Path | None = None) -> list[InvokeResult]:
    """Fan one function out over many events, `concurrency` handler processes at a time; results in order."""
    require_local_endpoint()
    fn = prepare(function_name)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(events), desc=function_name, unit="invocation")
    lock = threading.Lock()

    def one(event: Any) -> InvokeResult:
        result = _run(fn, event, log_dir=log_dir)
        if bar is not None:
            with lock:
                bar.update(1)
        return result

    try:
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            return list(pool.map(one, events))
    finally:
        if bar is not None:
            bar.close()


def require_local_endpoint() -> None:
    """The runtime runs the local stack's functions: boto3 must already point at it (resolve_target("local"))."""
    if not os.environ.get("AWS_ENDPOINT_URL"):
        raise PlaybookError("boto3 does not point at the local stack (no AWS_ENDPOINT_URL): the local runtime runs "
                            "the local stack's functions; resolve the local target first "
                            "(playbook.targets.resolve_target(\"local\"))")


# -- CLI ------------------------------------------------------------------------------------------------------
def cmd_invoke(args: argparse.Namespace) -> int:
    if args.event and args.payload:
        raise PlaybookError("give --event FILE or --payload JSON, not both")
    try:
        event = json.loads(Path(args.event).read_text()) if args.event else json.loads(args.payload or "{}")
    except (OSError, ValueError) as exc:
        raise PlaybookError(f"the event is not readable JSON: {exc}") from None
    from playbook.targets import resolve_target

    result = resolve_target("local").invoke(args.function, event)
    print(json.dumps(result.to_dict(), indent=2, sort_keys=True, default=str))
    return 0 if result.ok else 1


def register_commands(subparsers) -> None:
    p = subparsers.add_parser("invoke", help="run a deployed function locally from its deployed zip")
    p.add_argument("function", help="the function's name (e.g. playbook-refresh-marts)")
    p.add_argument("--event", metavar="FILE", help="the event as a JSON file (e.g. tests/events/...)")
    p.add_argument("--payload", metavar="JSON", help="the event as a JSON string")
    p.set_defaults(func=cmd_invoke)
