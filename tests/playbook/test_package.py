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
