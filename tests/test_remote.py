"""NNI's remote training service, for real: search trials over SSH to an OpenSSH server on 127.0.0.1.

The test starts its own ``sshd`` (Debian's ``openssh-server``; ``.ci/run`` installs it) on a free port
of 127.0.0.1, with a host key, a throwaway ed25519 client key pair and ``authorized_keys`` generated
into the test's directory, and stops it afterwards even when a check fails. Its sessions get their own
``HOME`` (``SetEnv``), so what NNI writes on the "remote machine" (``~/nni-experiments``: the uploaded
code, trial directories, the trial keeper) stays in the test's directory too.

Then ``nnictl create`` runs the repository's ``config.yml`` with ``trainingService: remote`` (as
``docs/config_remote.yml``; reuse mode off, NNI 3.0's default) and ``machineList`` =
that server with ``pythonPath`` = this virtual environment's ``bin/``: two tiny search trials
(beta 0 and 8) on the session's tiny SST-2 teacher run. Both must succeed, report per-epoch and
final metrics through NNI's REST API, and leave ``architecture.json`` where ``--export-to`` says.
Without ``sshd`` that test is skipped; the check that ``docs/config_remote.yml`` passes NNI's
validation and makes the same choices runs everywhere.
"""

from __future__ import annotations

import getpass
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from nni_adabert.trial import SEARCH, trial_settings
from test_nni import PYTHON, TINY, Experiment, free_port, trials_and_metrics

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = shutil.which("ssh-keygen")

needs_sshd = pytest.mark.skipif(not SSHD.is_file() or SSH_KEYGEN is None,
                                reason="OpenSSH server not installed (no /usr/sbin/sshd or ssh-keygen; "
                                       "Debian: apt-get install openssh-server)")

# What the SSH sessions (and so the trial keeper and the trials) get besides sshd's defaults.
# PIP_NO_INDEX: NNI 3.0 runs `python -m pip install nni --upgrade` on every machine it starts a
# worker on; nni 3.0 is already installed there, so this keeps that step off the network.
SESSION_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
               "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PIP_NO_INDEX": "1"}


class SshServer:
    """``sshd -D -e`` on 127.0.0.1 with a config, keys and log of its own under ``root``."""

    def __init__(self, root: Path):
        self.root, self.port, self.user, self.proc = root, free_port(), getpass.getuser(), None
        root.mkdir(parents=True, exist_ok=True)
        self.home = root / "remote-home"  # $HOME of every session: NNI's remote side writes here
        self.home.mkdir(parents=True, exist_ok=True)
        self.key = root / "id_ed25519"  # the client key NNI logs in with (ssh2 reads OpenSSH ed25519 keys)
        for key in (root / "ssh_host_ed25519_key", self.key):
            subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "nni-adabert-test", "-f", str(key)],
                           check=True, capture_output=True, timeout=60)
        (root / "authorized_keys").write_text(self.key.with_suffix(".pub").read_text())
        env = " ".join(f"{k}={v}" for k, v in {**SESSION_ENV, "HOME": str(self.home)}.items())
        self.config = root / "sshd_config"
        self.config.write_text(f"""\
Port {self.port}
ListenAddress 127.0.0.1
HostKey {root / "ssh_host_ed25519_key"}
PidFile {root / "sshd.pid"}
AuthorizedKeysFile {root / "authorized_keys"}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
SetEnv {env}
""")
        self.log = root / "sshd.log"

    def start(self) -> None:
        if os.geteuid() == 0:  # sshd run by root needs its privilege separation directory
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(self.config)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        for _ in range(100):
            if self.proc.poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"sshd did not start on 127.0.0.1:{self.port}:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


class RemoteExperiment(Experiment):
    """``config.yml`` with the remote training service: one machine, the test's sshd."""

    def __init__(self, root: Path, server: SshServer, trial_command: str, search_space: dict, max_trials: int):
        super().__init__(root, "remote", trial_command, search_space, max_trials)
        self.server = server
        config = yaml.safe_load(self.config_file.read_text())
        # Only trials/ is uploaded (the package comes from pythonPath's environment): NNI 3.0 refuses a
        # code directory of more than 2000 files or 300 MB, which the repository with its .venv is.
        config.update(trialCodeDirectory=str(REPO / "trials"), nniManagerIp="127.0.0.1", trainingService={
            "platform": "remote", "reuseMode": False,
            "machineList": [{"host": "127.0.0.1", "port": server.port, "user": server.user,
                             "sshKeyFile": str(server.key), "pythonPath": str(Path(PYTHON).parent)}]})
        self.config_file.write_text(yaml.safe_dump(config))

    def remote_dir(self) -> Path:
        """``~/nni-experiments/<id>/environments/remote-worker1`` on the remote side."""
        return self.server.home / "nni-experiments" / self.id / "environments" / "remote-worker1"

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            if self.id is not None:  # the trial keeper daemon NNI started over SSH (nnictl stop ends it)
                for pid_file in self.remote_dir().glob("trial_keeper*/trial_keeper.pid"):
                    pid = int(pid_file.read_text())
                    for _ in range(20):
                        if not self.is_trial_keeper(pid, pid_file.parent):
                            break
                        time.sleep(0.5)
                    else:
                        os.killpg(pid, signal.SIGKILL)  # launched with setpgrp: its trials go too

    @staticmethod
    def is_trial_keeper(pid: int, directory: Path) -> bool:
        """Whether ``pid`` is still this experiment's trial keeper (a pid may be reused)."""
        try:
            return str(directory).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False


@pytest.fixture(scope="module")
def remote_experiment(tmp_path_factory, runs):
    root = tmp_path_factory.mktemp("remote")
    server = SshServer(root / "ssh")
    command = (f"python search_trial.py --task SST-2 --teacher {runs / 'SST-2'} --cache-dir {runs / 'cache'} "
               f"{TINY} --k-max 3 --finetune-epochs 1 --export-to '{root}/searched/beta{{beta:g}}'")
    try:
        server.start()
        exp = RemoteExperiment(root, server, command, {"beta": {"_type": "choice", "_value": [0, 8]}}, max_trials=2)
        try:
            exp.create()
            status = exp.wait()
            yield exp, root, status, trials_and_metrics(exp)
        finally:
            exp.stop()
    finally:
        server.stop()


@pytest.mark.slow
@needs_sshd
def test_search_trials_over_ssh(remote_experiment):
    exp, root, status, trials = remote_experiment
    log = exp.root / "nni-experiments" / exp.id / "log" / "nnimanager.log"
    manager_log = log.read_text() if log.is_file() else "(no nnimanager.log)"
    assert status == "DONE", f"{status}\n{manager_log[-4000:]}\nsshd:\n{exp.server.log.read_text()[-2000:]}"
    assert "Web portal URLs" in exp.create_output and f":{exp.port}" in exp.create_output
    assert "Accepted publickey for" in exp.server.log.read_text()  # the trials really went over SSH
    assert sorted(t["parameters"]["beta"] for t in trials.values()) == [0, 8]
    for trial_id, trial in trials.items():
        assert trial["status"] == "SUCCEEDED", trial
        # one search epoch, then one fine-tuning epoch of the derived child: two per-epoch reports
        assert len(trial["intermediate"]) == 2, trial
        assert all(0 <= m["default"] <= 1 and m["default"] == m["val_acc"] for m in trial["intermediate"]), trial
        assert len(trial["final"]) == 1, trial
        final = trial["final"][0]
        assert final["default"] == final["accuracy"] and 0 <= final["default"] <= 1
        assert final["params"] > final["params_without_embedding"] >= 0 and final["speedup"] > 1
        # the trial's directory on the remote machine ($NNI_OUTPUT_DIR) ...
        remote = exp.remote_dir() / "trials" / trial_id
        for name in ("architecture.json", "student.safetensors", "cell.png", "final_result.json", "trial.stdout"):
            assert (remote / name).is_file(), remote / name
        assert json.loads((remote / "final_result.json").read_text()) == final
        # ... and the --export-to copy (an absolute path: a shared disk, here the same one)
        exported = root / "searched" / f"beta{trial['parameters']['beta']:g}" / "architecture.json"
        doc = json.loads(exported.read_text())
        assert doc["depth"] == final["depth"] and doc["search"]["beta"] == trial["parameters"]["beta"]
        assert doc["params"] == final["params"]


def test_docs_config_remote_is_what_the_test_runs(tmp_path):
    """docs/config_remote.yml passes NNI's validation and makes the choices the test above makes."""
    from nni.experiment.config import ExperimentConfig

    config = yaml.safe_load((REPO / "docs" / "config_remote.yml").read_text())
    key = tmp_path / "id_ed25519"
    key.write_text("not a key: NNI only checks that the file exists")
    for machine in config["trainingService"]["machineList"]:
        assert machine["pythonPath"].endswith("/bin"), machine  # a directory, put first on PATH
        machine["sshKeyFile"] = str(key)
    # the config is copied to the repository root: its relative paths start there
    config.update(searchSpaceFile=str(REPO / config["searchSpaceFile"]),
                  trialCodeDirectory=str(REPO / config["trialCodeDirectory"]))
    (tmp_path / "config.yml").write_text(yaml.safe_dump(config))
    canonical = ExperimentConfig.load(str(tmp_path / "config.yml")).canonical_copy()
    service = canonical.training_service
    assert service.platform == "remote" and service.reuse_mode is False and canonical.nni_manager_ip
    assert Path(canonical.trial_code_directory) == REPO / "trials"
    argv = shlex.split(canonical.trial_command)
    assert argv[:2] == ["python", "search_trial.py"] and (REPO / "trials" / argv[1]).is_file()
    space = json.loads(Path(canonical.search_space_file).read_text())
    trial_settings(SEARCH, argv[2:], {k: spec["_value"][0] for k, spec in space.items()})
