"""The frontend language in an environment without torch (issue 11, acceptance 5).

A fresh virtual environment (no system site-packages) gets only the client's dependencies
(numpy, requests, pydantic, tqdm) and this repository's ``python/`` folder on its path; in it,
``import sglang as sgl`` works, pulls in neither torch nor the runtime, and a program runs
against the test server through ``RuntimeEndpoint``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import venv
from pathlib import Path

PYTHON_SRC = Path(__file__).resolve().parents[3] / "python"
CLIENT_DEPS = ["numpy", "requests", "pydantic", "tqdm"]

PROGRAM = textwrap.dedent("""
    import sys
    import sglang as sgl, sglang.lang.api
    print(sgl.gen)
    heavy = [m for m in sys.modules
             if m.split(".")[0] in ("torch", "transformers") or m.startswith("sglang.srt")
             or m.startswith("sglang._")]
    assert not heavy, heavy
    try:
        import torch  # noqa: F401
    except ImportError:
        print("no torch")

    @sgl.function
    def qa(s, question):
        s += "Q: " + question + "\\nA:" + sgl.gen("answer", max_tokens=4, temperature=0)

    state = qa.run(question="1+1?", backend=sgl.RuntimeEndpoint(sys.argv[1]))
    print("ANSWER", repr(state["answer"]))
""")


def test_import_and_run_without_torch(server: str, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True, system_site_packages=False)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    *CLIENT_DEPS], check=True, timeout=600)
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "sglang_src.pth").write_text(str(PYTHON_SRC) + "\n")
    result = subprocess.run([python, "-c", PROGRAM, server], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "<function gen" in result.stdout and "no torch" in result.stdout
    assert "ANSWER '" in result.stdout
    assert sys.prefix != str(env_dir)
