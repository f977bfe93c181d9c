"""Crash and resume: a search killed with SIGKILL between checkpoints and started again
with the same command ends with what an uninterrupted run exports; a finished run is
not redone; an interrupted knowledge build picks up its finished stages."""

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from nni_adabert.teacher import knowledge
from nni_adabert.teacher.augment import AugmentConfig, Augmenter
from nni_adabert.cli import main
from nni_adabert.data.glue import load_task
from nni_adabert.errors import RunStopped, UserError, as_user_error, stop_on_signals
from nni_adabert.data.tasks import get_task
from nni_adabert.teacher.probes import ProbeConfig
from nni_adabert import runs as run_identity
from nni_adabert.runs import last_checkpoint
from nni_adabert.nas.distill import AdaBertDistillModule
from nni_adabert.training import (CHECKPOINT_MINUTES_ENV, CheckpointWithinEpochs, StopBetweenBatches, TrainingClock,
                                  trained_seconds)


def search_argv(runs, out, epochs=3):
    # batch 2: 64 steps per epoch on the 128-row store, so a kill lands between checkpoints
    return ["search", "--teacher", str(runs / "SST-2"), "--output-dir", str(out), "--epochs", str(epochs),
            "--batch-size", "2", "--arc-lr", "0.05", "--seed", "3", "--no-progress"]


def kill_after_first_checkpoint(argv, checkpoint):
    """Run the CLI in a child process and SIGKILL it as soon as its first epoch is saved
    (an epoch of this tiny search takes a fraction of a second: no time to lose)."""
    # the parent's thread count: float sums may differ with another one
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    child = subprocess.Popen([sys.executable, "-m", "nni_adabert.cli", *argv], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not checkpoint.is_file():
        assert child.poll() is None, child.stderr.read().decode()
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    child.stderr.close()


def test_search_killed_mid_run_resumes_to_the_same_export(runs, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="nni_adabert")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main(search_argv(runs, whole)) == 0

    checkpoint = killed / "search" / "checkpoints" / "last.ckpt"
    kill_after_first_checkpoint(search_argv(runs, killed), checkpoint)
    assert not (killed / "architecture.json").exists()
    saved = torch.load(checkpoint, weights_only=True, map_location="cpu")
    assert saved["epoch"] < 2 and saved["global_step"] >= 64   # at least one epoch done, not all three

    caplog.clear()
    assert main(search_argv(runs, killed)) == 0
    assert f"resuming from {checkpoint}" in caplog.text
    expected, resumed = (json.loads((d / "architecture.json").read_text()) for d in (whole, killed))
    assert resumed["architecture"] == expected["architecture"]
    assert [h["epoch"] for h in resumed["search"]["history"]] == [0, 1, 2]
    assert resumed["search"]["history"] == expected["search"]["history"]
    assert resumed["weights_sha256"] == expected["weights_sha256"]
    assert resumed["dev_metrics"] == expected["dev_metrics"]

    # Finished: the same command returns the export as it is.
    stamp = (whole / "architecture.json").stat().st_mtime_ns
    caplog.clear()
    assert main(search_argv(runs, whole)) == 0
    assert "already finished" in caplog.text and "resuming" not in caplog.text
    assert (whole / "architecture.json").stat().st_mtime_ns == stamp


def resumed_seconds(out):
    """The training seconds an exported student's record gives."""
    return json.loads((out / "architecture.json").read_text())["train_seconds"]


class Crash(Exception):
    """Stands for a kill: raised from a training step after the checkpoints before it were written."""


def crash_at_step(monkeypatch, step):
    """The next run's ``step``-th training step (from 1, counted in this process) raises :class:`Crash`."""
    calls = []
    original = AdaBertDistillModule.training_step

    def crashing(self, batch, batch_idx):
        calls.append(batch_idx)
        if len(calls) == step:
            raise Crash(f"killed at step {step}")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(AdaBertDistillModule, "training_step", crashing)
    return calls


@pytest.mark.parametrize("command", ["search", "retrain"])
def test_a_run_killed_within_an_epoch_resumes_there_to_the_same_result(runs, tmp_path, monkeypatch, caplog,
                                                                        command):
    """A checkpoint within an epoch: the resumed run skips the steps it trained and ends as the
    uninterrupted one, weights and metrics to the bit (the dropout and Gumbel draws continue)."""
    caplog.set_level(logging.INFO, logger="nni_adabert")
    if command == "search":
        def argv(out):
            return search_argv(runs, out, epochs=2)
        run = "search"
    else:
        assert main(search_argv(runs, tmp_path / "student", epochs=1)) == 0

        def argv(out):
            return ["retrain", "--arch", str(tmp_path / "student"), "--teacher", str(runs / "SST-2"),
                    "--output-dir", str(out), "--epochs", "2", "--batch-size", "2", "--seed", "1", "--no-progress"]
        run = "retrain"
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main(argv(whole)) == 0   # the default interval: no checkpoint within these short epochs

    # A checkpoint after every step of the second epoch (64 steps an epoch), killed in its 6th step.
    monkeypatch.setattr(CheckpointWithinEpochs, "due", lambda self, trainer: trainer.current_epoch == 1)
    crash_at_step(monkeypatch, 64 + 6)
    with pytest.raises(Crash):
        main(argv(killed))
    checkpoint = killed / run / "checkpoints" / "last.ckpt"
    saved = torch.load(checkpoint, weights_only=True, map_location="cpu")
    within = [state for state in saved["callbacks"].values() if "batches" in state]
    assert saved["epoch"] == 1 and [(state["epoch"], state["batches"]) for state in within] == [(1, 5)]
    assert not (killed / "architecture.json").exists()
    trained_before_kill = saved["callbacks"]["TrainingClock"]["seconds"]
    assert trained_before_kill > 0

    monkeypatch.undo()
    clock_starts = []  # the seconds each trainer's clock starts from
    start_clock = TrainingClock.on_train_start
    monkeypatch.setattr(TrainingClock, "on_train_start",
                        lambda self, *args: clock_starts.append(self.before) or start_clock(self, *args))
    caplog.clear()
    assert main(argv(killed)) == 0
    # The resumed run's clock went on from the checkpoint's: the record counts both starts.
    assert clock_starts[0] == trained_before_kill
    assert resumed_seconds(killed) >= trained_seconds([killed / run]) > trained_before_kill
    assert "resuming epoch 2 at batch 6 of 64" in caplog.text
    # Its epoch line says that its means and minutes are of the resumed part; the next epoch's would not.
    assert "resumed at batch 6 of 64: means and minutes of that part" in caplog.text
    expected, resumed = (json.loads((d / "architecture.json").read_text()) for d in (whole, killed))
    assert resumed["weights_sha256"] == expected["weights_sha256"]
    assert resumed["dev_metrics"] == expected["dev_metrics"]
    assert resumed["architecture"] == expected["architecture"]


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_bad_checkpoint_interval_is_one_line(runs, tmp_path, monkeypatch, capsys, value):
    monkeypatch.setenv(CHECKPOINT_MINUTES_ENV, value)
    assert main(search_argv(runs, tmp_path / "student", epochs=1)) == 2
    error = capsys.readouterr().err
    assert f"{CHECKPOINT_MINUTES_ENV} must be a number of minutes >= 0, got {value!r}" in error
    assert error.count("\n") == 1 and not (tmp_path / "student" / "search").exists()


def test_checkpoint_of_other_settings_is_refused_not_resumed(runs, tmp_path, capsys):
    """Started again in the same directory with other settings, a search must not carry the
    first run's weights and epochs into its export (the τ and lr schedules depend on --epochs too)."""
    out = tmp_path / "student"
    assert main(search_argv(runs, out)) == 0
    before = (out / "architecture.json").read_bytes()
    assert json.loads((out / "search" / "run.json").read_text())["epochs"] == 3

    capsys.readouterr()
    assert main(search_argv(runs, out, epochs=4)) == 2
    error = capsys.readouterr().err
    assert f"{out / 'search'} holds a checkpoint that is of another run (epochs: 3 there, 4 now)" in error
    assert error.count("\n") == 1   # one line, no traceback
    assert (out / "architecture.json").read_bytes() == before

    # Another teacher's store is another run too; the error names what differs.
    assert main(search_argv(runs, out) + ["--beta", "2"]) == 2
    assert "beta: 0.5 there, 2.0 now" in capsys.readouterr().err
    # In its own directory the new settings run.
    assert main(search_argv(runs, tmp_path / "longer", epochs=4)) == 0
    assert len(json.loads((tmp_path / "longer" / "architecture.json").read_text())["search"]["history"]) == 4


def test_retrain_killed_mid_run_resumes_only_with_its_settings(runs, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="nni_adabert")
    assert main(search_argv(runs, tmp_path / "student", epochs=1)) == 0
    argv = ["retrain", "--arch", str(tmp_path / "student"), "--teacher", str(runs / "SST-2"),
            "--output-dir", str(tmp_path / "retrained"), "--epochs", "3", "--batch-size", "2", "--seed", "1",
            "--no-progress"]
    checkpoint = tmp_path / "retrained" / "retrain" / "checkpoints" / "last.ckpt"
    kill_after_first_checkpoint(argv, checkpoint)

    capsys.readouterr()
    assert main(argv[:-1] + ["--lr", "0.005", "--no-progress"]) == 2
    assert "lr: 0.001 there, 0.005 now" in capsys.readouterr().err
    assert not (tmp_path / "retrained" / "architecture.json").exists()

    caplog.clear()
    assert main(argv) == 0
    assert f"resuming from {checkpoint}" in caplog.text
    assert json.loads((tmp_path / "retrained" / "architecture.json").read_text())["retrain"]["epochs"] == 3


def test_finished_retrain_is_not_redone(runs, tmp_path, caplog, capsys, monkeypatch):
    caplog.set_level(logging.INFO, logger="nni_adabert")
    assert main(search_argv(runs, tmp_path / "student", epochs=1)) == 0
    argv = ["retrain", "--arch", str(tmp_path / "student"), "--teacher", str(runs / "MRPC"),
            "--output-dir", str(tmp_path / "moved"), "--epochs", "1", "--batch-size", "16", "--no-progress"]
    assert main(argv) == 0
    doc = json.loads((tmp_path / "moved" / "architecture.json").read_text())
    assert doc["retrain"]["searched_on"] == "SST-2" and doc["retrain"]["epochs"] == 1
    stamp = (tmp_path / "moved" / "architecture.json").stat().st_mtime_ns
    caplog.clear()
    assert main(argv) == 0
    assert "not redoing it" in caplog.text
    assert (tmp_path / "moved" / "architecture.json").stat().st_mtime_ns == stamp
    # The same search reached through a link, or by a relative path, is the same retraining.
    (tmp_path / "linked").symlink_to(tmp_path / "student")
    caplog.clear()
    assert main(argv[:2] + [str(tmp_path / "linked")] + argv[3:]) == 0
    assert "not redoing it" in caplog.text
    monkeypatch.chdir(tmp_path)
    caplog.clear()
    assert main(argv[:2] + ["student"] + argv[3:]) == 0
    assert "not redoing it" in caplog.text
    assert doc["retrain"]["from"] == str((tmp_path / "student" / "architecture.json").resolve())
    # β weighs L_E, which a fixed child has not: it names no retraining, and `retrain` does not take it.
    assert "beta" not in doc["retrain"]
    with pytest.raises(SystemExit) as exit_:
        main(argv + ["--beta", "4"])
    assert exit_.value.code == 2

    # Another architecture under the same path (a search run again there) is another retraining:
    # not "already finished", and its checkpoints are another run's.
    source = tmp_path / "student" / "architecture.json"
    searched = json.loads(source.read_text())
    before = searched["architecture"]["edge_2_0"]
    other_op = next(op for op in searched["student_config"]["op_names"] if op != before)
    searched["architecture"]["edge_2_0"] = other_op
    source.write_text(json.dumps(searched))
    capsys.readouterr()
    assert main(argv) == 2
    assert f'arch.edge_2_0: "{before}" there, "{other_op}" now' in capsys.readouterr().err
    assert (tmp_path / "moved" / "architecture.json").stat().st_mtime_ns == stamp


def test_interrupted_knowledge_build_resumes_from_its_stages(runs, tmp_path, monkeypatch):
    spec = get_task("SST-2")
    splits = load_task(spec, str(runs / "glue"))
    teacher = runs / "SST-2" / "teacher"
    args = dict(augment=AugmentConfig(copies=1), probes=ProbeConfig(min_steps=20), progress=False)
    monkeypatch.setattr(knowledge, "AUGMENT_CHUNK", 16)   # 64 originals: 4 resumable chunks
    reference = knowledge.build_knowledge(spec, splits, teacher, cache_dir=tmp_path / "ref", **args)

    calls = {"augment": 0, "teacher_features": 0}
    real_augment, real_features = Augmenter.augment, knowledge.teacher_features

    def crashing_augment(self, texts):
        calls["augment"] += 1
        if calls["augment"] == 3:
            raise KeyboardInterrupt("killed")
        return real_augment(self, texts)

    def counted_features(*a, **kw):
        calls["teacher_features"] += 1
        return real_features(*a, **kw)

    monkeypatch.setattr(Augmenter, "augment", crashing_augment)
    monkeypatch.setattr(knowledge, "teacher_features", counted_features)
    try:
        knowledge.build_knowledge(spec, splits, teacher, cache_dir=tmp_path / "cache", **args)
        raise AssertionError("the build should have been interrupted")
    except KeyboardInterrupt:
        pass
    store_dir = tmp_path / "cache" / "knowledge" / reference.path.name
    stages = store_dir.with_name(store_dir.name + ".partial")
    assert not store_dir.exists()
    assert sorted(p.name for p in stages.iterdir() if not p.name.startswith(".tmp")) == [
        "augmented-00000", "augmented-00001", "dev_logits.safetensors", "probes.safetensors",
        "train_features.safetensors"]
    assert calls["teacher_features"] == 4   # train, dev, two augmented chunks

    calls.update(augment=10, teacher_features=0)   # past the crash
    resumed = knowledge.build_knowledge(spec, splits, teacher, cache_dir=tmp_path / "cache", **args)
    assert calls == {"augment": 12, "teacher_features": 2}   # only the two missing chunks ran
    assert not stages.exists() and resumed.meta["fingerprint"] == reference.meta["fingerprint"]
    for split in ("train", "dev"):
        a, b = reference.data[split], resumed.data[split]
        assert a["input_ids_a"] == b["input_ids_a"] and a["label"] == b["label"]
        assert torch.allclose(torch.tensor(a["teacher_logits"]), torch.tensor(b["teacher_logits"]), atol=1e-5)


def test_last_checkpoint_records_and_checks_the_run_identity(tmp_path, caplog):
    run_dir, identity = tmp_path / "run", {"knowledge_store": "/s", "epochs": 3, "config": {"lr": 0.1}}
    assert last_checkpoint(run_dir, identity) is None   # a fresh start records who it is
    assert json.loads((run_dir / "run.json").read_text()) == identity
    # No checkpoint yet: nothing to carry over, so other settings simply take the directory.
    other = {**identity, "epochs": 4}
    assert last_checkpoint(run_dir, other) is None
    assert json.loads((run_dir / "run.json").read_text()) == other

    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir()
    torch.save({"epoch": 0, "state_dict": {}}, checkpoint)
    assert last_checkpoint(run_dir, other) == checkpoint
    with pytest.raises(UserError, match=r"epochs: 4 there, 3 now; config.lr: 0.1 there, 0.2 now\)"):
        last_checkpoint(run_dir, {**identity, "config": {"lr": 0.2}})
    with pytest.raises(UserError, match=r"a: unset there, 1 now; b: unset there, 2 now; c: unset there, 3 now; 1 more"):
        last_checkpoint(run_dir, {**other, "a": 1, "b": 2, "c": 3, "d": 4})

    # A checkpoint that records no identity (nni-adabert 0.1 wrote none) is refused, not guessed at.
    (run_dir / "run.json").unlink()
    with pytest.raises(UserError, match=r"holds a checkpoint that records no settings; .*delete .*run"):
        last_checkpoint(run_dir, identity)
    assert not (run_dir / "run.json").exists()
    (run_dir / "run.json").write_text(json.dumps(identity))
    assert last_checkpoint(run_dir, identity) == checkpoint

    (run_dir / "run.json").write_text("{not json")
    with pytest.raises(UserError, match=r"run.json is not valid JSON .*delete .*run to start the run afresh"):
        last_checkpoint(run_dir, identity)


def test_a_finished_run_is_its_record_with_the_same_identity(tmp_path):
    """One rule decides "already done" for searches, retrainings and teachers: the record holds
    the run's identity (settings and store, as JSON reads them back)."""
    store = type("Store", (), {"path": tmp_path / "store"})()
    identity = run_identity.identity({"epochs": 3, "tau": (1.0, 0.1)}, store)
    assert identity == {"knowledge_store": str(tmp_path / "store"), "epochs": 3, "tau": [1.0, 0.1]}
    record = tmp_path / "architecture.json"
    assert run_identity.finished(record, identity) is None                       # nothing written yet
    record.write_text(json.dumps({"task": "SST-2", run_identity.IDENTITY_KEY: identity}))
    assert run_identity.finished(record, identity)["task"] == "SST-2"
    assert run_identity.finished(record, {**identity, "epochs": 4}) is None      # other settings: redo
    record.write_text(json.dumps({"task": "SST-2", "search": {"epochs": 3}}))  # 0.1 wrote no identity
    assert run_identity.finished(record, identity) is None
    record.write_text("{truncated")
    assert run_identity.finished(record, identity) is None



def test_unreadable_checkpoint_is_set_aside_and_the_run_starts_afresh(tmp_path, caplog):
    """A truncated last.ckpt (a full disk before checkpoints were written atomically) is renamed
    out of the way with a warning, not resumed from (which crashed) and not deleted."""
    run_dir, identity = tmp_path / "run", {"epochs": 3}
    assert last_checkpoint(run_dir, identity) is None
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir()
    torch.save({"epoch": 0, "weights": torch.zeros(1000)}, checkpoint)
    whole = checkpoint.read_bytes()
    checkpoint.write_bytes(whole[: len(whole) // 2])
    with caplog.at_level(logging.WARNING, logger="nni_adabert"):
        assert last_checkpoint(run_dir, identity) is None
    (aside,) = checkpoint.parent.glob("last.ckpt.unreadable-*")
    assert aside.read_bytes() == whole[: len(whole) // 2] and not checkpoint.exists()
    assert f"checkpoint {checkpoint} cannot be read" in caplog.text and "started this run afresh" in caplog.text
    # A file that is a zip but not a checkpoint of ours (another program's, a list) is set aside too.
    torch.save([1, 2, 3], checkpoint)
    assert last_checkpoint(run_dir, identity) is None and not checkpoint.exists()
    assert len(list(checkpoint.parent.glob("last.ckpt.unreadable-*"))) >= 1


def test_checkpoints_are_written_beside_their_destination_and_renamed(tmp_path, monkeypatch):
    """The trainers' checkpoint writer: a failed write leaves the previous checkpoint as it was,
    no temporary file behind, and one clear error naming the checkpoint."""
    from nni_adabert import atomic
    from nni_adabert.training import AtomicCheckpointIO, make_trainer

    assert isinstance(make_trainer(tmp_path / "run", 1, progress=False).strategy.checkpoint_io, AtomicCheckpointIO)
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    before = path.read_bytes()

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", full_disk)
    with pytest.raises(UserError, match=rf"no space left on the device while writing {path}"):
        io.save_checkpoint({"epoch": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_a_run_with_its_status_and_one_line(runs, tmp_path, caplog, signum):
    """SIGTERM (Lightning used to end the run with status 0) and SIGINT (status 1 and a traceback)
    end a run with 128 + the signal's number and one line; the same command then resumes it."""
    out = tmp_path / "stopped"
    checkpoint = out / "search" / "checkpoints" / "last.ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    child = subprocess.Popen([sys.executable, "-m", "nni_adabert.cli", *search_argv(runs, out)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not checkpoint.is_file():
        assert child.poll() is None, child.stderr.read()
        time.sleep(0.02)
    child.send_signal(signum)
    _, err = child.communicate(timeout=300)
    name = signal.Signals(signum).name
    assert child.returncode == 128 + signum, err
    assert err.strip().splitlines()[-1] == (f"nni-adabert search: stopped by {name}; run the same command again "
                                            "to resume from the last finished epoch")
    assert "Traceback" not in err and not (out / "architecture.json").exists()
    caplog.set_level(logging.INFO, logger="nni_adabert")
    assert main(search_argv(runs, out)) == 0
    assert f"resuming from {checkpoint}" in caplog.text
    whole = tmp_path / "whole"   # the same search, never stopped, exports the same student
    assert main(search_argv(runs, whole)) == 0
    expected, resumed = (json.loads((d / "architecture.json").read_text()) for d in (whole, out))
    assert (resumed["architecture"], resumed["weights_sha256"]) == (expected["architecture"],
                                                                      expected["weights_sha256"])


def test_an_error_a_library_made_of_a_signal_still_ends_the_run_as_stopped():
    """A signal's exception raised inside a library's C callback comes out as that library's error
    (CI saw pyarrow's ArrowInvalid end a search with status 1): after a signal, whatever ends the run
    is the stop, with its signal, and not an error for the user to fix."""
    def read_batch():  # what pyarrow did with it
        try:
            signal.raise_signal(signal.SIGTERM)
        except BaseException:
            raise OSError(errno.ENOSPC, "Schema at index 1 was different") from None  # (a full disk otherwise)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunStopped) as stopped:
        with stop_on_signals():
            try:
                read_batch()
            except OSError as exc:
                assert as_user_error(exc) is None
                raise
    assert stopped.value.signum == signal.SIGTERM and isinstance(stopped.value.__cause__, OSError)
    assert signal.getsignal(signal.SIGTERM) is before
    assert as_user_error(OSError(errno.ENOSPC, "full")) is not None  # no stop pending after the block


def test_during_training_a_signal_stops_at_the_next_batch_and_a_second_at_once():
    """In a fit (StopBetweenBatches) the first signal is only recorded, so it never lands inside the
    data loader; the next batch boundary raises it. A second one, or one outside a fit, raises at once,
    and a block that ends normally after a signal (a library caught the stop) raises it at its end."""
    stopper, trainer = StopBetweenBatches(), SimpleNamespace(world_size=1)
    with pytest.raises(RunStopped) as second:
        with stop_on_signals():
            stopper.setup(trainer, None, "fit")
            stopper.on_train_batch_start(trainer, None, None, 0)  # no signal: nothing
            signal.raise_signal(signal.SIGTERM)
            with pytest.raises(RunStopped) as stopped:
                stopper.on_train_batch_start(trainer, None, None, 1)
            assert stopped.value.signum == signal.SIGTERM
            signal.raise_signal(signal.SIGINT)
    assert second.value.signum == signal.SIGINT
    with pytest.raises(RunStopped) as after_fit:
        with stop_on_signals():
            stopper.setup(trainer, None, "fit")
            signal.raise_signal(signal.SIGINT)  # after the last batch: the fit's end raises it
            with pytest.raises(RunStopped):
                stopper.teardown(trainer, None, "fit")
            signal.raise_signal(signal.SIGTERM)  # after the fit: at once
    assert after_fit.value.signum == signal.SIGTERM
    with pytest.raises(RunStopped) as caught:
        with stop_on_signals():
            try:
                signal.raise_signal(signal.SIGTERM)
            except RunStopped:
                pass
    assert caught.value.signum == signal.SIGTERM


def test_a_run_directory_holds_one_run_at_a_time(runs, tmp_path, capsys, caplog):
    """A second command on a directory another run is using is refused at once, naming the holder;
    a lock left by a killed run is taken over; the lock goes with the run."""
    from nni_adabert.runs import LOCK_FILE, locked

    out = tmp_path / "student"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    first = subprocess.Popen([sys.executable, "-m", "nni_adabert.cli", *search_argv(runs, out)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not (out / "search" / "run.json").is_file():
        assert first.poll() is None, first.stderr.read()
        time.sleep(0.02)
    capsys.readouterr()
    assert main(search_argv(runs, out, epochs=1)) == 2
    err = capsys.readouterr().err
    assert f"{out} is in use by another nni-adabert run (pid {first.pid} on host " in err
    assert "search --teacher" in err and err.count("\n") == 1
    assert first.wait(timeout=300) == 0 and not (out / LOCK_FILE).exists()
    assert json.loads((out / "architecture.json").read_text())["search"]["epochs"] == 3   # the first run's, whole

    # A lock file left behind by a run killed with SIGKILL holds no lock: the next run takes it over.
    (out / LOCK_FILE).write_text("pid 999999 on host elsewhere since 2026-01-01 00:00:00: search")
    with caplog.at_level(logging.WARNING, logger="nni_adabert"), locked(out):
        assert str(os.getpid()) in (out / LOCK_FILE).read_text()
    assert "took over the lock of a run that is no longer running (pid 999999 on host elsewhere" in caplog.text
    # A directory the lock created and nothing else wrote to is gone again afterwards.
    with locked(tmp_path / "fresh"):
        pass
    assert not (tmp_path / "fresh").exists()


def test_the_training_clock_adds_each_start_to_the_seconds_of_the_checkpoint_it_resumes(tmp_path, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    retrain = tmp_path / "retrain"
    clock = TrainingClock(retrain)
    clock.on_load_checkpoint(None, None, {"callbacks": {"TrainingClock": {"seconds": 50.0}}})
    clock.load_state_dict({"seconds": 50.0})  # Lightning restores a checkpoint's callbacks before training starts
    clock.on_train_start(None, None)
    now[0] += 30
    clock.on_save_checkpoint(None, None, {})
    assert clock.state_dict() == {"seconds": 80.0} and trained_seconds([retrain]) == 80.0
    now[0] += 10.04
    clock.on_train_end(None, None)
    now[0] += 99  # after the end: not training
    assert clock.state_dict() == {"seconds": 90.0} and trained_seconds([retrain]) == 90.0
    # A search's record counts the runs it names: its phase, the candidates it trained, its fine-tuning.
    other = TrainingClock(tmp_path / "candidates" / "1")
    other.before = 12.0
    other.write()
    assert trained_seconds([retrain, tmp_path / "candidates" / "1"]) == 102.0
    assert trained_seconds([retrain, tmp_path / "finetune"]) is None  # a run without a record: unknown
    # Resumed from a checkpoint of before the clock: its seconds are a part only, and stay so when resumed again.
    old = TrainingClock(tmp_path / "old")
    old.on_load_checkpoint(None, None, {"callbacks": {"ModelCheckpoint": {}}})
    old.on_train_start(None, None)
    now[0] += 5
    old.on_train_end(None, None)
    assert old.state_dict() == {"seconds": 5.0, "partial": True} and trained_seconds([tmp_path / "old"]) is None
    again = TrainingClock(tmp_path / "old")
    again.load_state_dict(old.state_dict())
    assert again.partial and again.seconds == 5.0
