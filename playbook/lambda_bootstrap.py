"""The handler process of the local Lambda runtime: run as a script, never imported by the playbook.

`python -I -S lambda_bootstrap.py SPEC_FILE RESULT_FD` imports the handler named by its handler string from
the unpacked deployment zip, then serves invocations as a Lambda execution environment does: one JSON line
on stdin per invocation ({"request_id", "event_file", "log_file"}), handled one at a time, until stdin
closes. `-I -S` keep the interpreter clean: no PYTHONPATH, no current directory, no site-packages and no
`.pth` files (so the editable install of this repository is not on the path); sys.path is the unpacked
zip, then the dependency layer directories, then the standard library, as on Lambda. Messages for the
runtime go to RESULT_FD as JSON lines: {"init_done": epoch ms} once the handler is imported, then for
each invocation {"started": epoch ms} and {"result": ...} or {"error": ...}. Each invocation's output goes
to its own log file, and reports its own peak memory (the kernel's high-water mark is reset as it starts).
"""

import importlib
import json
import logging
import os
import sys
import time
import traceback


class LambdaContext:
    """The attributes and method Lambda's Python runtime gives a handler's `context`."""

    def __init__(self, spec: dict, deadline_ms: int):
        self.function_name = spec["function_name"]
        self.function_version = spec["function_version"]
        self.invoked_function_arn = spec["invoked_function_arn"]
        self.memory_limit_in_mb = int(spec["memory_mb"])
        self.aws_request_id = spec["request_id"]
        self.log_group_name = spec["log_group_name"]
        self.log_stream_name = spec["log_stream_name"]
        self.identity = None
        self.client_context = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


def _error(exc: BaseException, error_type: str | None = None, message: str | None = None) -> dict:
    frames = traceback.extract_tb(exc.__traceback__)
    return {"errorMessage": message if message is not None else str(exc),
            "errorType": error_type or type(exc).__name__,
            "stackTrace": traceback.format_list(frames)}


def _high_water_mark() -> int:
    """This process's peak resident set (VmHWM, bytes): the runtime's last look at the memory used."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _send(fd: int, message: dict) -> None:
    data = (json.dumps({**message, "hwm": _high_water_mark()}) + "\n").encode()
    while data:
        data = data[os.write(fd, data):]


_current = {"request_id": ""}


class _RequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.aws_request_id = _current["request_id"]
        return True


def _log_setup() -> None:
    """Lambda's root handler: level from AWS_LAMBDA_LOG_LEVEL, tab-separated lines with the request id."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(
        "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s", "%Y-%m-%dT%H:%M:%S"))
    handler.formatter.converter = time.gmtime
    handler.addFilter(_RequestId())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(os.environ.get("AWS_LAMBDA_LOG_LEVEL", "INFO").upper())


def _output_to(log_file: str) -> None:
    """This invocation's stdout and stderr (and every child's) go to its own log file."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _reset_high_water_mark() -> None:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        pass


def _invoke(handler, spec: dict, invocation: dict, fd: int) -> None:
    _output_to(invocation["log_file"])
    _reset_high_water_mark()
    request_id = invocation["request_id"]
    _current["request_id"] = request_id
    os.environ["AWS_LAMBDA_REQUEST_ID"] = request_id
    started = int(time.time() * 1000)
    _send(fd, {"started": started})
    context = LambdaContext({**spec, "request_id": request_id}, started + int(spec["timeout_s"]) * 1000)
    try:
        with open(invocation["event_file"], encoding="utf-8") as fh:
            event = json.load(fh)
        result = handler(event, context)
    except Exception as exc:  # noqa: BLE001 - the function's error is the invocation's result
        error = _error(exc)
        print(f"[ERROR] {error['errorType']}: {error['errorMessage']}\nTraceback (most recent call last):\n"
              + "".join(error["stackTrace"]), end="", flush=True)
        sys.stderr.flush()
        _send(fd, {"error": error})
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        payload = json.dumps(result)
    except (TypeError, ValueError) as exc:
        _send(fd, {"error": {"errorMessage": f"Unable to marshal response: {exc}",
                             "errorType": "Runtime.MarshalError", "stackTrace": []}})
        return
    _send(fd, {"result_json": payload})


def main() -> int:
    spec_file, fd = sys.argv[1], int(sys.argv[2])
    with open(spec_file, encoding="utf-8") as fh:
        spec = json.load(fh)
    sys.path[:0] = [spec["code_dir"], *spec["layer_paths"]]
    os.chdir(spec["code_dir"])
    _log_setup()
    module_name, _, attr = spec["handler"].rpartition(".")
    try:
        if not module_name:
            raise ValueError(f"Bad handler '{spec['handler']}': not enough values to unpack")
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - reported as Lambda reports an import failure
        _send(fd, {"error": _error(exc, "Runtime.ImportModuleError",
                                   f"Unable to import module '{module_name}': {exc}")})
        return 1
    handler = getattr(module, attr, None)
    if not callable(handler):
        _send(fd, {"error": {"errorMessage": f"Handler '{attr}' missing on module '{module_name}'",
                             "errorType": "Runtime.HandlerNotFound", "stackTrace": []}})
        return 1
    if spec.get("check_only"):
        probe = {"module_file": getattr(module, "__file__", None), "sys_path": sys.path}
        try:
            import pipeline
            probe["pipeline_file"] = pipeline.__file__
        except ImportError:
            probe["pipeline_file"] = None
        try:
            import playbook  # noqa: F401 - must fail: the handler process never sees the playbook
            probe["playbook_importable"] = True
        except ImportError:
            probe["playbook_importable"] = False
        _send(fd, {"result": probe})
        return 0
    _send(fd, {"init_done": int(time.time() * 1000)})
    for line in sys.stdin:
        if line.strip():
            _invoke(handler, spec, json.loads(line), fd)
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    sys.exit(main())
