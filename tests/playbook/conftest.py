"""The playbook tests' own provisioned pipeline (prefix pbrt) beside the session's stack, one per module."""

from __future__ import annotations

import pytest

from tests.playbook.deployed import provisioned_pipeline


@pytest.fixture(scope="module")
def pipeline_stack(stack):
    with provisioned_pipeline() as outputs:
        yield outputs
