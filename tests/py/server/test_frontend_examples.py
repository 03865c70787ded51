"""Every example program of the frontend document runs unchanged as a script (issue 11,
acceptance 4): examples/frontend/*.py against the test server, checked by their output."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "frontend"
IPV4 = r"((25[0-5]|2[0-4]\d|[01]?\d\d?).){3}(25[0-5]|2[0-4]\d|[01]?\d\d?)"


def run_example(name: str, server: str) -> str:
    result = subprocess.run([sys.executable, str(EXAMPLES / name)], cwd=EXAMPLES,
                            env={**os.environ, "SGLANG_URL": server}, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Error in stream_executor" not in result.stderr, result.stderr[-3000:]
    return result.stdout


def test_multi_turn_question(server: str) -> None:
    out = run_example("multi_turn_question.py", server)
    assert "system : You are a helpful assistant." in out and out.count("assistant :") == 2


def test_tool_use(server: str) -> None:
    out = run_example("tool_use.py", server)
    assert re.search(r"^tool: (calculator|search engine)$", out, re.MULTILINE)


def test_tip_suggestion(server: str) -> None:
    out = run_example("tip_suggestion.py", server)
    assert "Tip 1:" in out and "Tip 2:" in out and "In summary" in out


def test_regular_expression(server: str) -> None:
    out = run_example("regular_expression.py", server)
    assert re.fullmatch(IPV4, out.strip())


def test_json_decode(server: str) -> None:
    character = json.loads(run_example("json_decode.py", server))
    assert character["house"] in ("Gryffindor", "Slytherin", "Ravenclaw", "Hufflepuff")
    assert isinstance(character["wand"]["length"], float)


def test_batching(server: str) -> None:
    out = run_example("batching.py", server)
    assert len(out.rstrip("\n").split("\n")) == 3


def test_streaming(server: str) -> None:
    out = run_example("streaming.py", server)
    assert out.startswith("Q: What is the capital of France?\nA:")


@pytest.mark.parametrize("name", ["roles_begin_end.py"])
def test_roles_begin_end(server: str, name: str) -> None:
    out = run_example(name, server)
    assert "Question: What is the capital of France?" in out and "'role': 'assistant'" in out
