"""The benchmarks' run naming (bench/common.py): a run on another teacher gets its own directory."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import common  # noqa: E402


def fake_store(path: str, task: str = "MRPC"):
    """A store as ``open_knowledge`` returns it: its path absolute, here inside the checkout."""
    return SimpleNamespace(path=common.ROOT / path, meta={"task": task})


DEFAULT_STORE = "runs/bench/cache/MRPC-default"


@pytest.mark.parametrize("recorded", [DEFAULT_STORE, str(common.ROOT / DEFAULT_STORE)])
def test_runs_on_the_default_teacher_keep_their_names_others_get_their_own(tmp_path, monkeypatch, recorded):
    # probes.json records the store relative to the checkout (runs from before store paths were
    # absolute) or absolute (since): the default teacher's store is recognized either way.
    monkeypatch.setattr(common, "RUNS", tmp_path)
    (tmp_path / "teacher-MRPC").mkdir()
    (tmp_path / "teacher-MRPC" / "probes.json").write_text(json.dumps({"knowledge_store": recorded}))
    default, other = fake_store(DEFAULT_STORE), fake_store("runs/bench/cache/MRPC-5ep")
    assert common.store_settings(default) == {}
    # Named by its path inside the checkout, as before: the name does not depend on where the checkout is.
    assert common.store_settings(other) == {"knowledge_store": "runs/bench/cache/MRPC-5ep"}
    settings = {"beta": 0.5}
    dirs = {common.run_dir("search", "MRPC", {**settings, **common.store_settings(s)}) for s in (default, other)}
    assert len(dirs) == 2
    # The default teacher's run is named exactly as before the option existed.
    assert common.run_dir("search", "MRPC", settings) in dirs
    # No default teacher run at all: every store names its runs.
    assert common.store_settings(fake_store("cache/SST-2-x", task="SST-2")) == {"knowledge_store": "cache/SST-2-x"}
    # A store outside the checkout: its absolute path.
    outside = SimpleNamespace(path=tmp_path / "elsewhere", meta={"task": "MRPC"})
    assert common.store_settings(outside) == {"knowledge_store": str(tmp_path / "elsewhere")}


def test_per_task_options():
    assert common.per_task(["SST-2=2000", "MRPC=800"], "--rows", int) == {"SST-2": 2000, "MRPC": 800}
    assert common.per_task(["MRPC=teacher-MRPC-5ep"], "--teacher-runs") == {"MRPC": "teacher-MRPC-5ep"}
    with pytest.raises(SystemExit, match="--rows: expected TASK=VALUE.*'MRCP=800'"):
        common.per_task(["MRCP=800"], "--rows", int)
    with pytest.raises(SystemExit, match="--rows: 'MRPC=lots': 'lots' is not a valid value"):
        common.per_task(["MRPC=lots"], "--rows", int)
    with pytest.raises(SystemExit, match="--teacher-runs: expected TASK=VALUE"):
        common.per_task(["teacher-MRPC-5ep"], "--teacher-runs")
