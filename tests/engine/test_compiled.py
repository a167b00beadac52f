"""The compiled engine is the engine: the same decisions as its source, and never a stale build.

``pip install`` compiles the engine's modules with Cython where it can (setup.py). Where it could
not, these tests are skipped with the reason; under CI (``CI`` set) a plain-Python install fails
them instead, since CI's machines can compile.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import escalier.core.engine
from escalier.compiled import ENVIRONMENT_VARIABLE, MODULES, is_compiled

ROOT = Path(__file__).resolve().parents[2]

# Runs the engine bench's mixed workload and prints a digest of every decision made.
_DIGEST = """
import hashlib, json, sys
sys.path.insert(0, {bench!r})
import run
import yaml
from escalier.compiled import is_compiled
from escalier.core.engine import decide
from escalier.core.model import Timer
from escalier.core.policy import Policy

policy = Policy.model_validate(yaml.safe_load((run.HERE / "policy.yaml").read_text())).with_version("bench", "policy.yaml")
digest = hashlib.sha256()
count = 0
for deliveries in run.workload({tickets}, 11):
    state = None
    for arrival, item in deliveries:
        while state is not None and state.wake_at is not None and state.wake_at <= arrival:
            due = state.wake_at
            decision = decide(policy, state, Timer(system="zendesk", ticket_id=state.ticket_id, due_at=due), due)
            state = decision.state
            digest.update(repr(decision).encode())
            count += 1
        decision = decide(policy, state, item, arrival)
        state = decision.state
        digest.update(repr(decision).encode())
        count += 1
print(json.dumps({{"compiled": is_compiled(), "decisions": count, "digest": digest.hexdigest()}}))
"""


def _require_compiled() -> None:
    if is_compiled():
        return
    reason = "the engine is installed as plain Python (no Cython or no C compiler at install time)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key != ENVIRONMENT_VARIABLE}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=300
    )


def test_compiled_and_source_engines_decide_alike():
    _require_compiled()
    code = _DIGEST.format(bench=str(ROOT / "bench" / "engine"), tickets=400)
    compiled = _run(code)
    source = _run(code, **{ENVIRONMENT_VARIABLE: "1"})
    assert compiled.returncode == 0, compiled.stderr
    assert source.returncode == 0, source.stderr
    compiled_run, source_run = json.loads(compiled.stdout), json.loads(source.stdout)
    assert (compiled_run["compiled"], source_run["compiled"]) == (True, False)
    assert compiled_run["decisions"] > 2000
    assert compiled_run == {**source_run, "compiled": True}


def test_a_compiled_module_refuses_to_load_beside_other_source(tmp_path):
    _require_compiled()
    built = Path(escalier.core.engine.__file__)
    source = built.with_name("engine.py")
    shutil.copy(built, tmp_path / built.name)
    load = (
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location({MODULES[0]!r}, {str(tmp_path / built.name)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print('loaded')\n"
    )
    (tmp_path / "engine.py").write_bytes(source.read_bytes())
    same = _run(load)
    assert same.returncode == 0 and same.stdout.strip() == "loaded", same.stderr
    (tmp_path / "engine.py").write_bytes(source.read_bytes() + b"\n# edited\n")
    edited = _run(load)
    assert edited.returncode != 0
    assert "was compiled from another version of" in edited.stderr


def test_the_environment_variable_selects_the_source():
    code = (
        "import escalier.core.engine as e, escalier.core.calendar as c, escalier.compiled as k\n"
        "print(e.__file__.endswith('.py'), c.__file__.endswith('.py'), k.is_compiled())"
    )
    result = _run(code, **{ENVIRONMENT_VARIABLE: "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "False"]
