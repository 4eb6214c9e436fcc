"""The target (playbook.targets) is the one place local and AWS differ, and production code reaches the playbook only
as deployed functions: the rules read from the source with ast, and each target's preflight and invocations."""

from __future__ import annotations

import ast
import io
import json
from pathlib import Path

import pytest

from playbook.errors import PlaybookError
from playbook.settings import PROJECT_ROOT

PLAYBOOK = PROJECT_ROOT / "playbook"
# the handler process of the local runtime: it imports the deployed handler from the unpacked zip, by design
BOOTSTRAP = PLAYBOOK / "lambda_bootstrap.py"
# what playbook/ may import from lambda_src's pipeline package (README, Layout): shared definitions, never a
# function's job (no handler, no loading, no sending, no refresh)
ALLOWED = {
    "pipeline.config",  # the configuration's model: parse, validate, the schema a company file follows
    "pipeline.model",  # the canonical tables and their columns
    "pipeline.money",  # exact money: formats and currencies
    "pipeline.periods",  # report periods
    "pipeline.schedules",  # AWS schedule expressions: when a source is due
    "pipeline.freshness",  # the freshness note every report states, read from marts.data_freshness
    "pipeline.outliers",  # the sales lines far from their neighbours (marts.sales_outliers), as the email reads them
    "pipeline.attempts",  # the ledger's words for an attempt that died (its ABANDONED text)
    "pipeline.sources.kinds",  # the kinds of source: how each one's deliveries arrive, which function loads them
    "pipeline.roles",  # the SCRAM verifier a role's login is set with
    "pipeline.migrations",  # the migration runner, for a database no deployment serves (tests, benchmarks)
}


def python_files() -> list[Path]:
    return sorted(p for p in PLAYBOOK.rglob("*.py") if p != BOOTSTRAP)


def pipeline_imports(path: Path) -> list[tuple[int, str]]:
    """Every pipeline module a file imports, at any depth (inside functions too), or names to import_module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "pipeline"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "pipeline":
                found += [(node.lineno, f"pipeline.{a.name}") for a in node.names]
            elif node.module.startswith("pipeline."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
                "import_module", "__import__"):
            for arg in node.args[:1]:
                if isinstance(arg, ast.Constant) and str(arg.value).split(".")[0] == "pipeline":
                    found.append((node.lineno, str(arg.value)))
    return found


def test_the_playbook_imports_only_shared_definitions_from_lambda_src():
    """No handler module (pipeline.handlers.*), no email sending (pipeline.expense_email), no marts refresh
    (pipeline.marts), nor any other module that does a function's job, runs in the consultant's process: the
    playbook invokes the deployed functions through the target."""
    found = {(str(p.relative_to(PROJECT_ROOT)), line, module) for p in python_files()
             for line, module in pipeline_imports(p)}
    assert found, "the scan finds the imports there are"
    refused = sorted(f"{path}:{line} imports {module}" for path, line, module in found if module not in ALLOWED)
    assert not refused, "\n".join(refused)


def test_the_import_scan_catches_each_way_of_importing_a_handler(tmp_path):
    """The rule above can fail: every spelling of an import of a handler is found."""
    probe = tmp_path / "probe.py"
    probe.write_text("import pipeline.handlers.migrate\nfrom pipeline.marts import refresh_marts\n"
                     "def f():\n    from pipeline import expense_email\n"
                     "    import importlib\n    importlib.import_module('pipeline.handlers.refresh_marts')\n")
    assert {m for _, m in pipeline_imports(probe)} == {
        "pipeline.handlers.migrate", "pipeline.marts", "pipeline.expense_email", "pipeline.handlers.refresh_marts"}


def test_no_comparison_with_a_target_name_below_the_boundary():
    """`target == "local"` and its kin are gone: what differs is asked of the target object."""
    found = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                names = {o.value for o in operands if isinstance(o, ast.Constant)}
                names |= {e.value for o in operands if isinstance(o, ast.Tuple | ast.List | ast.Set)
                          for e in o.elts if isinstance(e, ast.Constant)}
                if names & {"local", "aws"}:
                    found.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}")
    assert not found, found


def test_only_the_local_target_changes_the_playbook_s_environment():
    """os.environ is changed in one place: the local target's activation (AWS_ENDPOINT_URL and its company)."""
    changes = []
    for path in python_files():
        tree = ast.parse(path.read_text(), str(path))
        scopes = {}
        for scope in ast.walk(tree):
            if isinstance(scope, ast.ClassDef | ast.FunctionDef):
                for child in ast.walk(scope):
                    scopes.setdefault(id(child), []).append(scope.name)
        for node in ast.walk(tree):
            target = None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                    "update", "pop", "setdefault", "clear", "popitem", "__setitem__", "__delitem__"):
                target = node.func.value
            elif isinstance(node, ast.Assign | ast.AugAssign | ast.Delete):
                for t in getattr(node, "targets", [getattr(node, "target", None)]):
                    if isinstance(t, ast.Subscript):
                        target = t.value
            if target is not None and ast.unparse(target) in ("os.environ", "environ"):
                changes.append((str(path.relative_to(PROJECT_ROOT)), ".".join(scopes.get(id(node), [])[:2])))
    assert changes == [("playbook/targets.py", "LocalTarget.activate")], changes


def test_a_target_is_named_local_or_aws():
    from playbook.targets import AwsTarget, LocalTarget, resolve_target, target_named

    assert isinstance(target_named("local"), LocalTarget) and isinstance(target_named("aws"), AwsTarget)
    with pytest.raises(PlaybookError, match="unknown target 'nowhere': choose local or aws"):
        resolve_target("nowhere")


def test_the_aws_preflight_refuses_the_local_endpoint_and_wants_a_region(monkeypatch):
    from playbook.targets import AwsTarget

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:47566")
    with pytest.raises(PlaybookError, match="AWS_ENDPOINT_URL is set"):
        AwsTarget().activate()
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    with pytest.raises(PlaybookError, match="no AWS region"):
        AwsTarget().activate()


def test_on_aws_the_warehouse_is_reached_through_the_proxy_only(monkeypatch):
    from playbook.targets import AwsTarget

    monkeypatch.delenv("PLAYBOOK_DATABASE_URL", raising=False)
    with pytest.raises(PlaybookError, match="PLAYBOOK_DATABASE_URL"):
        AwsTarget().database_url()


def test_the_local_runtime_refuses_to_run_without_the_local_endpoint(monkeypatch):
    from playbook import runtime

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with pytest.raises(PlaybookError, match="resolve the local target first"):
        runtime.invoke("any-function", {})


class StubbedLambda:
    """boto3.client("lambda") answering Invoke as Lambda does, and recording what it was asked."""

    def __init__(self, answers: list[dict]):
        import boto3
        from botocore.stub import Stubber

        self.client = boto3.client("lambda", region_name="eu-west-2", aws_access_key_id="x",
                                   aws_secret_access_key="x")  # noqa: S106 - a stub's credentials
        self.stubber = Stubber(self.client)
        for expected, answer in answers:
            self.stubber.add_response("invoke", answer, expected)
        self.stubber.activate()

    def __call__(self, service, *args, **kwargs):
        assert service == "lambda"
        return self.client


def test_on_aws_invoke_waits_with_request_response_or_queues_with_event(monkeypatch):
    import boto3
    from botocore.response import StreamingBody

    from playbook.targets import AwsTarget

    def body(data: dict) -> StreamingBody:
        raw = json.dumps(data).encode()
        return StreamingBody(io.BytesIO(raw), len(raw))

    failed = {"errorMessage": "no such mart", "errorType": "MartRefreshError", "stackTrace": []}
    stub = StubbedLambda([
        ({"FunctionName": "p-refresh-marts", "InvocationType": "RequestResponse", "Payload": b"{}"},
         {"StatusCode": 200, "Payload": body({"status": "ok"})}),
        ({"FunctionName": "p-refresh-marts", "InvocationType": "RequestResponse", "Payload": b"{}"},
         {"StatusCode": 200, "FunctionError": "Unhandled", "Payload": body(failed)}),
        ({"FunctionName": "p-ingest-sales", "InvocationType": "Event", "Payload": b'{"objects": []}'},
         {"StatusCode": 202}),
    ])
    monkeypatch.setattr(boto3, "client", stub)
    target = AwsTarget()
    assert target.call("p-refresh-marts") == {"status": "ok"}
    with pytest.raises(PlaybookError, match="p-refresh-marts failed: MartRefreshError: no such mart"):
        target.call("p-refresh-marts")
    queued = target.invoke("p-ingest-sales", {"objects": []}, wait=False)
    assert queued.status == "queued" and queued.payload is None
    stub.stubber.assert_no_pending_responses()


def test_on_aws_a_synchronous_invoke_outwaits_the_function_and_never_runs_it_twice(monkeypatch):
    """migrate (300 s) and the refresh (600 s) run longer than boto3's default 60 s read timeout, after which
    its retries would invoke them again: the client waits out Lambda's limit and retries nothing."""
    import boto3

    from playbook.targets import LAMBDA_LIMIT_S, AwsTarget

    made = []

    def client(service, *args, config=None, **kwargs):
        made.append(config)
        raise RuntimeError("no call needed")

    monkeypatch.setattr(boto3, "client", client)
    with pytest.raises(RuntimeError, match="no call needed"):
        AwsTarget().invoke("p-migrate", {})
    [config] = made
    assert config.read_timeout > LAMBDA_LIMIT_S >= 900
    assert config.retries == {"total_max_attempts": 1, "mode": "standard"}


def test_deployment_stops_when_the_runtimes_boto3_cannot_claim_a_run():
    """A runtime whose boto3 predates S3's conditional put would send the 08:00 email twice under a race: the
    deploy stage's smoke check refuses it before the first schedule fires."""
    from playbook.stages import check_handlers

    class Target:
        def check_handler(self, name):
            return None

        def function(self, job):
            return f"p-{job}"

        def call(self, function, event):
            assert event == {"check": "runtime"}
            return {"boto3": "1.34.0", "conditional_put": False}

    with pytest.raises(PlaybookError, match="p-SendExpenseEmail: the runtime's boto3 1.34.0 cannot make S3's "
                                            "conditional put"):
        check_handlers(Target(), [])


def test_an_api_on_this_machine_is_refused_before_deploying_to_aws(tmp_path):
    """The demo's accounting system answers on 127.0.0.1: Lambda cannot reach it, so deploying that
    configuration to AWS stops before anything changes, naming the field; locally it is what runs."""
    import pytest
    import yaml

    from playbook.config import load_config
    from playbook.deploy import refuse_unreachable_apis
    from playbook.errors import PlaybookError
    from playbook.targets import AwsTarget, LocalTarget

    config = load_config()
    refuse_unreachable_apis(LocalTarget(), config)
    with pytest.raises(PlaybookError, match=r"sources\.trade_invoices\.api\.base_url is http://127\.0\.0\.1:8765, "
                                            r"this machine: the functions on aws cannot reach it"):
        refuse_unreachable_apis(AwsTarget(), config)
    data = yaml.safe_load(Path("playbook.yaml").read_text())
    data["sources"]["trade_invoices"]["api"]["base_url"] = "https://api.xero.com/api.xro/2.0"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(PlaybookError, match=r"api\.auth\.token_url is http://127\.0\.0\.1:8765/oauth/token"):
        refuse_unreachable_apis(AwsTarget(), load_config(tmp_path / "c.yaml"))
    del data["sources"]["trade_invoices"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    refuse_unreachable_apis(AwsTarget(), load_config(tmp_path / "c.yaml"))
