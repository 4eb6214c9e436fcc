"""`playbook deploy` rolls the current function zip out to every pipeline function, and only when it changed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import boto3

from playbook import runtime
from playbook.deploy import deploy, pipeline_functions
from playbook.package import LAMBDA_SRC
from playbook.targets import LocalTarget
from tests.playbook.deployed import PREFIX


def playbook_deploy() -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "playbook", "deploy", "--target", "local"], capture_output=True,
                          text=True, timeout=180, env={**os.environ, "PLAYBOOK_STACK_PREFIX": PREFIX})


def actions(stdout: str) -> dict[str, str]:
    return dict(re.findall(rf"^  ({PREFIX}-[\w-]+) +(updated|unchanged)$", stdout, re.M))


def test_changed_code_reaches_every_function_once_and_the_runtime_runs_it_cold(pipeline_stack, tmp_path):
    functions = pipeline_functions(pipeline_stack)
    assert len(functions) >= 9
    source = tmp_path / "lambda_src"
    shutil.copytree(LAMBDA_SRC, source, ignore=shutil.ignore_patterns("__pycache__"))
    (source / "pipeline" / "deployed_marker.py").write_text("MARKER = 'changed for the deploy test'\n")
    lam = boto3.client("lambda")
    refresh = pipeline_stack["RefreshMartsFunctionName"]
    assert runtime.invoke(refresh, {}).ok  # leaves a warm environment of the code before the deploy
    try:
        changed = deploy(LocalTarget(), source=source)
        assert changed.functions == dict.fromkeys(functions, "updated")
        for name in functions:
            assert lam.get_function_configuration(FunctionName=name)["CodeSha256"] == changed.code_sha256
        code_dir = runtime.prepare(refresh).code_dir
        assert (code_dir / "pipeline" / "deployed_marker.py").exists()  # the runtime runs what was deployed
        after = runtime.invoke(refresh, {})
        assert after.ok and after.init_ms is not None, "new code starts cold: no environment of the old code"
        assert after.code_sha256 == changed.code_sha256
        again = deploy(LocalTarget(), source=source)
        assert again.functions == dict.fromkeys(functions, "unchanged") and not again.changed
    finally:
        restored = playbook_deploy()  # the real lambda_src again, through the CLI
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert actions(restored.stdout) == dict.fromkeys(functions, "updated")
    second = playbook_deploy()
    assert second.returncode == 0, second.stdout + second.stderr
    assert actions(second.stdout) == dict.fromkeys(functions, "unchanged")
    assert "configuration: unchanged" in second.stdout and "changes: none" in second.stdout
    code_dir = runtime.prepare(pipeline_stack["RefreshMartsFunctionName"]).code_dir
    assert not (code_dir / "pipeline" / "deployed_marker.py").exists()
