"""Fixtures of the DSL tests."""

from __future__ import annotations

import pytest
from scripted_backend import ScriptedBackend


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend()
