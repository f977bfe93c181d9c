"""The benchmarks' run naming and options (bench/common.py)."""

import json
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


def test_a_step_the_page_timed_before_keeps_its_minutes_when_found_finished(tmp_path, monkeypatch):
    """The benches resume: started again, a step is only found finished, and the page keeps the minutes it took."""
    ran = []
    monkeypatch.setattr(common, "run_cli", lambda argv: ran.append(argv) or "nni-adabert " + " ".join(argv))
    page = {"command": "python bench/pipeline.py --name x",
            "teacher": {"dev": {"f1": 0.86}, "command": "nni-adabert teacher --task MRPC", "minutes": 16.0,
                        "seconds": 960.2},
            "seeds": [{"search": {"command": "nni-adabert search --seed 0", "minutes": 31.9, "seconds": 1914.0}}]}
    common.write_results(tmp_path, page, "")
    common.keep_earlier_timings(tmp_path)
    assert common.timed(["search", "--seed", "0"]) == page["seeds"][0]["search"]
    assert common.timed(["teacher", "--task", "MRPC"]) == {"command": "nni-adabert teacher --task MRPC",
                                                            "minutes": 16.0, "seconds": 960.2}   # not its dev
    fresh = common.timed(["search", "--seed", "1"])                 # a step the page never timed: this run's time
    assert fresh["command"] == "nni-adabert search --seed 1" and fresh["minutes"] == 0.0
    assert len(ran) == 3                                            # every step still runs (and is found finished)
    common.keep_earlier_timings(tmp_path / "another-page")         # a page without a result yet: nothing kept
    assert common.timed(["search", "--seed", "0"])["minutes"] == 0.0
    # A run found finished that no page timed: the time its own record says it trained, over all its starts.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "architecture.json").write_text(json.dumps({"train_seconds": 754.0}))
    found = common.timed(["retrain", "--output-dir", str(tmp_path / "run")])
    assert (found["minutes"], found["seconds"]) == (12.6, 754.0)
    (tmp_path / "run" / "architecture.json").write_text("{}")      # a record of before the clock: this run's time
    assert common.timed(["retrain", "--output-dir", str(tmp_path / "run")])["minutes"] == 0.0
    # A teacher run found finished: its fine-tuning's seconds, from the teacher's own record.
    (tmp_path / "t" / "teacher").mkdir(parents=True)
    (tmp_path / "t" / "teacher" / "adabert_teacher.json").write_text(json.dumps({"train_seconds": 2400.0}))
    assert common.timed(["teacher", "--output-dir", str(tmp_path / "t")])["minutes"] == 40.0
