"""bench/gpu_check.sh, the GPU check, run with --cpu so that it cannot rot between GPU sessions."""

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_every_step_on_the_cpu(runs, tmp_path):
    out = tmp_path / "check"
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--cpu", str(out), "--data",
                           str(runs / "glue"), "--rows", "48", "--runs-dir", str(tmp_path / "runs")],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert set(result["steps"]) == {"teacher", "search", "retrain", "evaluate", "search_step"}
    assert result["device"] == "CPU" and result["train_rows"] == 48
    assert 0 <= result["student_dev"]["accuracy"] <= 1 and result["speedup_over_teacher"] > 0
    assert result["search_step"]["gumbel_darts_over_single"] > 0
    assert (out / "result.md").read_text().startswith("# GPU check on CPU")
    assert (tmp_path / "runs" / "retrain" / "architecture.json").is_file()
