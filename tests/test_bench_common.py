"""The benchmarks' run naming and options (bench/common.py)."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import common  # noqa: E402

from nni_adabert import runs  # noqa: E402
from nni_adabert.config import SearchConfig  # noqa: E402


def fake_store(path, task: str = "MRPC"):
    """A store as ``open_knowledge`` returns it: its path absolute."""
    return SimpleNamespace(path=Path(path), meta={"task": task})


def test_a_run_is_named_by_its_identity_so_another_teacher_gets_its_own(tmp_path, monkeypatch):
    """Benchmarks share a run exactly when the library would call it the same run
    (``nni_adabert.runs.identity``: settings and knowledge store)."""
    monkeypatch.setattr(common, "RUNS", tmp_path)
    default, other = fake_store(tmp_path / "cache" / "MRPC-default"), fake_store(tmp_path / "cache" / "MRPC-5ep")
    config = SearchConfig(beta=0.5)
    name = lambda store, cfg: common.run_dir("search", "MRPC", runs.identity(cfg.to_dict(), store))  # noqa: E731
    assert name(default, config) == name(default, SearchConfig(beta=0.5))           # the same run: one directory
    assert name(default, config) != name(other, config)                              # another teacher's store
    assert name(default, config) != name(default, SearchConfig(beta=0.6))           # other settings
    assert name(default, config).parent == tmp_path / "search" and name(default, config).name.startswith("MRPC-")


def test_per_task_options():
    assert common.per_task(["SST-2=2000", "MRPC=800"], "--rows", int) == {"SST-2": 2000, "MRPC": 800}
    assert common.per_task(["MRPC=teacher-MRPC-5ep"], "--teacher-runs") == {"MRPC": "teacher-MRPC-5ep"}
    with pytest.raises(SystemExit, match="--rows: expected TASK=VALUE.*'MRCP=800'"):
        common.per_task(["MRCP=800"], "--rows", int)
    with pytest.raises(SystemExit, match="--rows: 'MRPC=lots': 'lots' is not a valid value"):
        common.per_task(["MRPC=lots"], "--rows", int)
    with pytest.raises(SystemExit, match="--teacher-runs: expected TASK=VALUE"):
        common.per_task(["teacher-MRPC-5ep"], "--teacher-runs")
