"""The dependency layer for AWS: what goes in it, and a layer too large for Lambda refused with its reason."""

from __future__ import annotations

import pytest

from playbook.errors import PlaybookError
from playbook.package import layer_entries


def _tree(root, files: dict[str, int]) -> None:
    for name, size in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)


def test_the_layer_leaves_out_test_suites_and_caches(tmp_path):
    _tree(tmp_path, {"python/pandas/core/frame.py": 10, "python/pandas/tests/frame/test_api.py": 10,
                     "python/numpy/_core/tests/test_x.py": 10, "python/numpy/_core/_multiarray.so": 10,
                     "python/pandas/__pycache__/x.cpython-311.pyc": 10, "python/six.py": 10,
                     "python/pandas/_testing/__init__.py": 10})
    names = [name for name, _ in layer_entries(tmp_path)]
    assert sorted(names) == ["python/numpy/_core/_multiarray.so", "python/pandas/_testing/__init__.py",
                             "python/pandas/core/frame.py", "python/six.py"]


def test_a_layer_over_the_lambda_limit_is_refused_naming_its_largest_packages(tmp_path):
    _tree(tmp_path, {"python/pandas/core/frame.py": 6000, "python/numpy/linalg.so": 3000, "python/six.py": 500,
                     "python/pandas/tests/big.py": 50_000})
    assert len(layer_entries(tmp_path, limit=9500)) == 3  # the test suite does not count
    with pytest.raises(PlaybookError, match=r"over Lambda's .* largest: pandas 0 MiB, numpy 0 MiB, six.py"):
        layer_entries(tmp_path, limit=9000)


def test_the_lock_holds_the_versions_the_tests_run_with():
    """The layer is built from lambda_src/requirements.lock: every package at the version this venv has, so
    what is deployed is what the tests ran. Out of date after a change, it says how to write it again."""
    import importlib.util

    from playbook.package import LOCK, REQUIREMENTS

    spec = importlib.util.spec_from_file_location("lock_layer", REQUIREMENTS.parents[1] / "scripts" / "lock_layer.py")
    lock_layer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lock_layer)
    assert LOCK.read_text() == lock_layer.lock_text(), "run .venv/bin/python scripts/lock_layer.py"
    pinned = {line.split("==")[0] for line in LOCK.read_text().splitlines() if "==" in line}
    assert "pandas" not in pinned and "boto3" not in pinned and "botocore" not in pinned  # none imported, or the
    assert {"numpy", "psycopg2-binary", "python-calamine", "fastexcel", "pydantic"} <= pinned  # runtime's own


def test_the_layer_installs_the_lock_exactly_for_the_runtimes_python_and_platform(tmp_path):
    from playbook.package import LOCK, layer_install_command
    from playbook.templates import RUNTIME

    command = layer_install_command(tmp_path / "python", RUNTIME.removeprefix("python"))
    assert command[command.index("-r") + 1] == str(LOCK) and "--no-deps" in command
    platforms = [command[i + 1] for i, arg in enumerate(command) if arg == "--platform"]
    assert platforms == ["manylinux_2_28_x86_64", "manylinux2014_x86_64"]  # newer numpy ships 2_28 wheels only
    assert command[command.index("--python-version") + 1] == RUNTIME.removeprefix("python")


def test_a_layer_compiled_for_the_runtime_keeps_its_bytecode(tmp_path):
    _tree(tmp_path, {"python/six.py": 10, "python/__pycache__/six.cpython-312.pyc": 10,
                     "python/numpy/tests/__pycache__/t.cpython-312.pyc": 10})
    assert [n for n, _ in layer_entries(tmp_path, bytecode=True)] == ["python/__pycache__/six.cpython-312.pyc",
                                                                       "python/six.py"]
    assert [n for n, _ in layer_entries(tmp_path)] == ["python/six.py"]
