"""AdaBERT as NNI trials, end to end through ``nnictl`` and NNI's REST API.

Two tiny experiments built from the repository's ``config.yml`` (its tuner and
training service; tiny trial settings; their own port, HOME and working directory):

1. search trials, a beta sweep (beta 0 and 8); the first trial builds the teacher run;
2. retrain trials: the structure the first experiment exported, a seeded random
   structure, and a deliberately bad architecture JSON that must show FAILED with a
   one-line message while the others succeed.

Each waits for DONE by polling ``/api/v1/nni/check-status`` (a bounded number of polls),
then checks ``/trial-jobs`` and ``/metric-data``: every successful trial has intermediate
metrics and one final dict whose ``default`` is dev accuracy, with params, FLOPs and
speedup, sent under the trial's own parameter id. Every experiment is stopped, and its
manager process ended, even when a check fails.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from nni_adabert.trial import SEARCH, RETRAIN, trial_settings

POLL_SECONDS = 3
MAX_POLLS = 300          # the loops end; the whole file takes about 3 minutes on 2 CPU cores
PYTHON = sys.executable
NNICTL = [str(Path(PYTHON).with_name("nnictl"))] if Path(PYTHON).with_name("nnictl").is_file() \
    else [PYTHON, "-m", "nni.tools.nnictl.nnictl"]

TINY = ("--teacher-train-limit 32 --teacher-dev-limit 64 --train-limit 32 --batch-size 16 --epochs 1 "
        "--speedup-rows 32 --speedup-repeats 1 --threads 1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nni_env(home: Path) -> dict:
    """nnictl keeps its experiment registry under $HOME: a private HOME isolates the test."""
    env = dict(os.environ, HOME=str(home), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(PYTHON).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


class Experiment:
    """One ``nnictl create`` experiment; :meth:`stop` always cleans up."""

    def __init__(self, root: Path, name: str, trial_command: str, search_space: dict, max_trials: int):
        self.root, self.port, self.id = root, free_port(), None
        self.home = root / f"home-{name}"  # its own nnictl registry: `nnictl stop` can only hit this one
        self.home.mkdir(parents=True, exist_ok=True)
        config = yaml.safe_load((REPO / "config.yml").read_text())
        space_file = root / f"{name}-space.json"
        space_file.write_text(json.dumps(search_space))
        config.update(experimentName=f"test-{name}", searchSpaceFile=str(space_file), trialCommand=trial_command,
                      trialCodeDirectory=str(REPO), maxTrialNumber=max_trials,
                      experimentWorkingDirectory=str(root / "nni-experiments"))
        self.config_file = root / f"{name}.yml"
        self.config_file.write_text(yaml.safe_dump(config))

    def create(self) -> str:
        before = set(self.registry())
        for _ in range(3):
            out = subprocess.run(NNICTL + ["create", "--config", str(self.config_file), "--port", str(self.port)],
                                 env=nni_env(self.home), capture_output=True, text=True, timeout=120)
            self.create_output = out.stdout + out.stderr
            # nnictl gives NNI's web server 3 seconds to come up; on a busy machine it may need more
            # (nnictl then reports "Connection refused" and stops it): try again on another port.
            if out.returncode == 0 or "check-status" not in self.create_output:
                break
            self.port = free_port()
        # the new entry on our port (search trials register their one-shot NAS runs here too, portless)
        new = [k for k, v in self.registry().items() if k not in before and str(v.get("port")) == str(self.port)]
        if new:
            self.id = new[0]
        assert out.returncode == 0 and self.id, f"nnictl create failed:\n{self.create_output}"
        assert "Experiment ID: " in self.create_output and self.id in self.create_output, self.create_output
        return self.id

    def registry(self) -> dict:
        path = self.home / "nni-experiments" / ".experiment"
        return json.loads(path.read_text()) if path.is_file() else {}

    def get(self, route: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/nni/{route}", timeout=30) as r:
            return json.loads(r.read())

    def wait(self) -> str:
        """Poll until the experiment leaves RUNNING / NO_MORE_TRIAL (at most MAX_POLLS polls)."""
        status = None
        for _ in range(MAX_POLLS):
            status = self.get("check-status")["status"]
            if status not in ("INITIALIZED", "RUNNING", "NO_MORE_TRIAL", "TUNER_NO_MORE_TRIAL"):
                return status
            time.sleep(POLL_SECONDS)
        return f"still {status} after {MAX_POLLS} polls"

    def stop(self) -> None:
        if self.id is None:
            return
        pid = (self.registry().get(self.id) or {}).get("pid")
        subprocess.run(NNICTL + ["stop", self.id], env=nni_env(self.home), capture_output=True, timeout=120)
        if pid:  # nnictl stop ends the manager (and with it the trials); make sure of it
            for _ in range(20):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.5)
            else:
                os.kill(pid, signal.SIGKILL)


def trials_and_metrics(exp: Experiment) -> dict[str, dict]:
    """trial id -> {status, parameters, parameter_id, log, intermediate: [dict], final: [dict]}."""
    trials = {}
    for t in exp.get("trial-jobs"):
        record = json.loads(t["hyperParameters"][0])
        trials[t["trialJobId"]] = {"status": t["status"], "parameters": record["parameters"],
                                   "parameter_id": str(record["parameter_id"]), "log": Path(t["logPath"]),
                                   "intermediate": [], "final": []}
    for m in exp.get("metric-data"):
        value = json.loads(json.loads(m["data"]))  # NNI stores the reported dict JSON-encoded twice
        assert m["parameterId"] == trials[m["trialJobId"]]["parameter_id"], m
        trials[m["trialJobId"]]["intermediate" if m["type"] == "PERIODICAL" else "final"].append(value)
    return trials


def check_successful_trial(trial: dict, n_intermediate: int) -> dict:
    assert trial["status"] == "SUCCEEDED", trial
    assert len(trial["intermediate"]) == n_intermediate, trial
    assert all(0 <= m["default"] <= 1 and m["default"] == m["val_acc"] for m in trial["intermediate"]), trial
    assert len(trial["final"]) == 1, trial
    final = trial["final"][0]
    assert final["default"] == final["accuracy"] and 0 <= final["default"] <= 1
    assert final["params"] > final["params_without_embedding"] >= 0 and final["flops"] >= 0
    assert final["speedup"] > 1 and 1 <= final["depth"] <= 8
    for name in ("architecture.json", "student.safetensors", "cell.png", "final_result.json"):
        assert (trial["log"] / name).is_file(), name
    assert json.loads((trial["log"] / "final_result.json").read_text()) == final
    return final


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("nni")


@pytest.fixture(scope="module")
def search_experiment(root):
    """Experiment 1: search trials for beta 0 and 8; the first builds the teacher run."""
    command = (f"{shlex.quote(PYTHON)} trials/search_trial.py --teacher {root / 'teacher'} "
               f"--cache-dir {root / 'cache'} {TINY} --k-max 3 --finetune-epochs 1 "
               f"--export-to '{root}/searched/beta{{beta:g}}'")
    exp = Experiment(root, "search", command, {"beta": {"_type": "choice", "_value": [0, 8]}}, max_trials=2)
    try:
        exp.create()
        status = exp.wait()
        yield exp, status, trials_and_metrics(exp)
    finally:
        exp.stop()


def test_search_trials_report_intermediate_and_final_metrics(search_experiment, root):
    exp, status, trials = search_experiment
    assert "Web portal URLs" in exp.create_output and f":{exp.port}" in exp.create_output
    assert status == "DONE", status
    assert sorted(t["parameters"]["beta"] for t in trials.values()) == [0, 8]
    for trial in trials.values():
        # one search epoch, then one fine-tuning epoch of the derived child: two per-epoch reports
        final = check_successful_trial(trial, n_intermediate=2)
        exported = root / "searched" / f"beta{trial['parameters']['beta']:g}" / "architecture.json"
        doc = json.loads(exported.read_text())
        assert doc["depth"] == final["depth"] and doc["search"]["beta"] == trial["parameters"]["beta"]
        assert doc["search"]["k_max"] == 3 and doc["params"] == final["params"]
    assert (root / "teacher" / "probes.json").is_file()


def test_retrain_trials_and_a_failing_one(search_experiment, root):
    bad = root / "bad.json"
    bad.write_text('{"format": "nni-adabert/architecture", "version": 1, "architecture": [1, 2]}')
    command = (f"{shlex.quote(PYTHON)} trials/retrain_trial.py --teacher {root / 'teacher'} "
               f"--cache-dir {root / 'cache'} {TINY} --k-max 3")
    arches = [str(root / "searched" / "beta8"), str(bad), "random:1"]
    exp = Experiment(root, "retrain", command, {"arch": {"_type": "choice", "_value": arches}}, max_trials=3)
    try:
        exp.create()
        status = exp.wait()
        assert status == "DONE", status  # a failed trial does not stop the experiment
        trials = {t["parameters"]["arch"]: t for t in trials_and_metrics(exp).values()}
        assert set(trials) == set(arches)
        failed = trials[str(bad)]
        assert failed["status"] == "FAILED" and not failed["final"]
        stderr = (failed["log"] / "trial.stderr").read_text().strip().splitlines()
        assert stderr[-1] == (f"nni-adabert retrain trial: error: {bad}: "
                              "field 'architecture' is missing or not an object"), stderr
        assert not any(line.startswith("Traceback") for line in stderr)
        assert stderr[-1] in (failed["log"] / "trial.log").read_text()  # NNI's trial log has it too
        transferred = check_successful_trial(trials[arches[0]], n_intermediate=1)
        searched = json.loads((root / "searched" / "beta8" / "architecture.json").read_text())
        assert transferred["depth"] == searched["depth"] and transferred["params"] == searched["params"]
        random_final = check_successful_trial(trials["random:1"], n_intermediate=1)
        random_doc = json.loads((trials["random:1"]["log"] / "architecture.json").read_text())
        assert random_doc["retrain"]["from"] == "random:1"
        assert random_final["depth"] <= 3
    finally:
        exp.stop()


def test_missing_data_fails_with_one_line(root):
    """Outside NNI too: a trial whose teacher must be built from data that is not there."""
    out = subprocess.run([PYTHON, "trials/search_trial.py", "--teacher", str(root / "no-teacher"),
                          "--data", str(root / "no-such-glue-dir"), "--cache-dir", str(root / "cache")],
                         cwd=REPO, env=nni_env(root / "home-standalone"), capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("nni-adabert search trial: error: ") and "no-such-glue-dir" in last, out.stderr
    assert "Traceback" not in out.stderr


def test_a_negative_number_of_augmented_copies_fails_with_one_line(root):
    """The trial's teacher setting is checked as `nni-adabert teacher` checks it (it once meant none)."""
    teacher = root / "no-teacher-negative"
    out = subprocess.run([PYTHON, "trials/search_trial.py", "--teacher", str(teacher), "--aug-copies", "-1",
                          "--cache-dir", str(root / "cache")],
                         cwd=REPO, env=nni_env(root / "home-standalone"), capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last == "nni-adabert search trial: error: AugmentConfig.copies must be an integer >= 0, got -1", out.stderr
    assert not (teacher / "probes.json").exists()


def test_unknown_tuner_parameter_is_a_user_error():
    from nni_adabert.errors import UserError

    with pytest.raises(UserError, match="unknown trial parameter 'betta'"):
        trial_settings(SEARCH, [], {"betta": 1})
    with pytest.raises(UserError, match="'epochs': 'many' is not a valid int"):
        trial_settings(RETRAIN, [], {"epochs": "many"})
    args = trial_settings(SEARCH, ["--beta", "1", "--epochs", "2"], {"beta": 8, "arc-lr": "0.001", "grad_clip": 1})
    assert (args.beta, args.epochs, args.arc_lr, args.grad_clip) == (8.0, 2, 0.001, 1.0)
    assert trial_settings(SEARCH, ["--full"], {"full": "false"}).full is False
    assert trial_settings(RETRAIN, [], {"arch": "random:3", "data": ""}).data is None  # "" = bundled sample


def test_shipped_config_and_search_spaces_are_valid():
    """config.yml passes NNI's own validation; every search-space key is a trial setting."""
    from nni.experiment.config import ExperimentConfig

    config = ExperimentConfig.load(str(REPO / "config.yml"))
    canonical = config.canonical_copy()
    assert canonical.trial_concurrency == 1 and canonical.trial_gpu_number == 0
    assert canonical.tuner.name == "GridSearch" and canonical.training_service.platform == "local"
    spaces = sorted((REPO / "search_spaces").glob("*.json"))
    assert {p.name for p in spaces} >= {"search_beta.json", "retrain.json"}
    for path in spaces:
        space = json.loads(path.read_text())
        kind = RETRAIN if path.name.startswith("retrain") else SEARCH
        trial_settings(kind, [], {key: spec["_value"][0] for key, spec in space.items()})


def test_transfer_table_from_trial_jobs(tmp_path):
    """trials/transfer_table.py: searched structures by their task, random ones as mean ± std."""
    sys.path.insert(0, str(REPO / "trials"))
    try:
        from transfer_table import collect, format_table
    finally:
        sys.path.remove(str(REPO / "trials"))
    searched = tmp_path / "sst2"
    searched.mkdir()
    (searched / "architecture.json").write_text(json.dumps({"task": "SST-2"}))

    def job(arch, task, value, status="SUCCEEDED"):
        final = [{"data": json.dumps(json.dumps({"default": value, "params": 1}))}] if value is not None else []
        return {"status": status, "finalMetricData": final,
                "hyperParameters": [json.dumps({"parameter_id": 0, "parameters": {"arch": arch, "task": task}})]}

    jobs = [job(str(searched), "SST-2", 0.9), job(str(searched), "MRPC", 0.8), job("random:0", "SST-2", 0.6),
            job("random:1", "SST-2", 0.7), job("random:2", "MRPC", 0.5), job("random:3", "MRPC", None, "FAILED")]
    table = format_table(collect(jobs))
    assert table.splitlines() == ["| structure | MRPC | SST-2 |", "|---|---|---|",
                                  "| searched on SST-2 | 80.00 | 90.00 |",
                                  "| random | 50.00 | 65.00 ± 7.07 (n=2) |"]
