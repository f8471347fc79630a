"""Fixtures shared by the server and Triton tests: one tiny exported BERT model dir and its Runtime."""

from __future__ import annotations

import pytest
from test_runtime_support import cached_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny exported BERT model dir (built once per session, see test_runtime_support.cached_model)."""
    return cached_model(tmp_path_factory, "bert", 0)[1]


@pytest.fixture(scope="module")
def rt(model_dir):
    from hadskip.runtime import Runtime

    return Runtime.load(model_dir)
