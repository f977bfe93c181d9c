"""Teacher fine-tuning, probes and the teacher-knowledge cache, on small slices of real data."""

import json
import shutil
import statistics
from collections import Counter

import datasets
import pytest
import pytorch_lightning as pl
import torch
from safetensors.torch import load_file, save_file

import nni_adabert.teacher.knowledge as knowledge
from nni_adabert.teacher.augment import AugmentConfig, default_copies
from nni_adabert.data.encoding import IGNORE_LABEL
from nni_adabert.data.glue import load_task
from nni_adabert.errors import UserError
from nni_adabert.teacher.knowledge import build_knowledge, holdout_split
from nni_adabert.data.tasks import get_task
from nni_adabert.data.encoding import tokenize
from nni_adabert.teacher.finetune import (TeacherConfig, finetune_epochs, finetune_teacher, load_finetuned_teacher,
                                          load_teacher_config, load_tokenizer, read_teacher_info,
                                          teacher_word_embeddings)
from nni_adabert.teacher.probes import ProbeConfig, teacher_features
from nni_adabert.training import KeepBestEpoch, bf16_native, fit, inference_precision, make_trainer
from nni_adabert.teacher.probes import train_probes


def small(data, n_train, n_dev):
    data["train"] = data["train"].select(range(n_train))
    data["dev"] = data["dev"].select(range(n_dev))
    return data


@pytest.fixture(scope="module")
def sst2(glue_dir):
    return small(load_task("SST-2", glue_dir), 48, 24)


@pytest.fixture(scope="module")
def mrpc(glue_dir):
    return small(load_task("MRPC", glue_dir), 24, 16)


def test_finetune_saves_hf_checkpoint_and_is_not_redone(tmp_path, sst2, minilm_dir, monkeypatch):
    spec = get_task("SST-2")
    info = finetune_teacher(spec, sst2, None, tmp_path, TeacherConfig(epochs=1, batch_size=16), progress=False)
    saved = tmp_path / "teacher"
    assert (saved / "model.safetensors").is_file() and (saved / "tokenizer.json").is_file()
    assert 0.0 <= info["dev_metrics"]["accuracy"] <= 1.0 and info["num_layers"] == 6
    assert read_teacher_info(saved)["dev_metrics"] == info["dev_metrics"]
    assert info["epochs"] == 1 and info["best_epoch"] == 1 and info["train_seconds"] > 0
    kept = {f"dev_{name}": pytest.approx(value) for name, value in info["dev_metrics"].items()}
    assert info["dev_history"] == [{"epoch": 1, **kept}]
    assert (tmp_path / "teacher_train" / "checkpoints" / "last.ckpt").is_file()
    # Fine-tuning changed the encoder (not only the new head).
    before = load_file(str(minilm_dir / "model.safetensors"))["embeddings.word_embeddings.weight"]
    after = load_file(str(saved / "model.safetensors"))["bert.embeddings.word_embeddings.weight"]
    assert not torch.equal(before, after)

    # Same settings: the finished run is reused, nothing is trained again.
    monkeypatch.setattr("nni_adabert.teacher.finetune.fit", lambda *a, **k: pytest.fail("fine-tuned twice"))
    assert finetune_teacher(spec, sst2, None, tmp_path, TeacherConfig(epochs=1, batch_size=16),
                            progress=False) == {**info, "reused": True}


def test_the_fine_tuning_precision_is_a_setting_and_fp32_runs_keep_their_identity(tmp_path, sst2):
    """fp32 on a CPU is what every teacher was fine-tuned in before the setting: its run identity is the same
    as then (no precision in it), so those runs are still found. bf16 autocast is another run."""
    spec = get_task("SST-2")
    fp32 = finetune_teacher(spec, sst2, None, tmp_path, TeacherConfig(epochs=1, batch_size=16, precision="fp32"),
                            progress=False)
    assert fp32["precision"] == "32-true"
    assert "precision" not in fp32["run_identity"] and set(fp32["run_identity"]["config"]) == {
        "epochs", "batch_size", "min_steps", "lr", "weight_decay", "warmup_ratio", "seed"}
    bf16_config = TeacherConfig(epochs=1, batch_size=16, precision="bf16")
    with pytest.raises(UserError, match='another run [(]precision: unset there, "bf16-mixed" now[)]'):
        finetune_teacher(spec, sst2, None, tmp_path, bf16_config, progress=False)   # not over the fp32 run's files
    bf16 = finetune_teacher(spec, sst2, None, tmp_path / "bf16", bf16_config, progress=False)
    assert not bf16.get("reused") and bf16["precision"] == bf16["run_identity"]["precision"] == "bf16-mixed"
    assert 0.0 <= bf16["dev_metrics"]["accuracy"] <= 1.0
    assert read_teacher_info(tmp_path / "bf16" / "teacher")["precision"] == "bf16-mixed"
    with pytest.raises(UserError, match="teacher setting precision must be one of 'auto', 'bf16', 'fp32', got 'fp16'"):
        TeacherConfig(precision="fp16")


def test_small_train_sets_get_enough_update_steps():
    """--epochs none: 3 epochs, or as many as make --min-steps steps; an explicit --epochs is kept."""
    assert finetune_epochs(TeacherConfig(), 67349) == 3  # SST-2: 2,105 steps an epoch
    assert finetune_epochs(TeacherConfig(), 3668) == 9  # MRPC: 115 steps an epoch
    assert finetune_epochs(TeacherConfig(min_steps=0), 3668) == 3
    assert finetune_epochs(TeacherConfig(epochs=1), 64) == 1 and finetune_epochs(TeacherConfig(epochs=0), 64) == 0


class ScriptedDev(pl.LightningModule):
    """A weight that moves every step, and a dev accuracy that peaks at epoch 2 of 3."""

    SCORES = (0.5, 0.8, 0.6)

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(3))
        self.seen = {}  # epoch -> the weight as validated

    def training_step(self, batch, _):
        return ((self.weight - batch[0]) ** 2).sum()

    def validation_step(self, batch, _):
        pass

    def on_validation_epoch_end(self):
        self.seen[self.current_epoch + 1] = self.weight.detach().clone()
        self.log("dev_accuracy", self.SCORES[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_training_ends_with_the_best_dev_epoch_also_when_resumed(tmp_path):
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 3)), batch_size=2)
    module, best = ScriptedDev(), KeepBestEpoch("dev_accuracy")
    fit(make_trainer(tmp_path / "a", 3, progress=False, callbacks=(best,)), module, loader, loader, tmp_path / "a", {})
    assert best.best_epoch == 2 and [h["dev_accuracy"] for h in best.history] == pytest.approx([0.5, 0.8, 0.6])
    assert torch.equal(module.weight.detach(), module.seen[2]) and not torch.equal(module.seen[2], module.seen[3])

    # Stopped after epoch 2, then resumed: the best weights came back from the checkpoint.
    first = ScriptedDev()
    fit(make_trainer(tmp_path / "b", 2, progress=False, callbacks=(KeepBestEpoch("dev_accuracy"),)), first,
        loader, loader, tmp_path / "b", {})
    resumed, best = ScriptedDev(), KeepBestEpoch("dev_accuracy")
    fit(make_trainer(tmp_path / "b", 3, progress=False, callbacks=(best,)), resumed, loader, loader, tmp_path / "b",
        {})
    assert 2 not in resumed.seen and best.best_epoch == 2 and len(best.history) == 3
    assert torch.equal(resumed.weight.detach(), module.seen[2])


@pytest.mark.parametrize("make, message", [
    (lambda d: d, "config.json is missing"),
    (lambda d: (d / "config.json").write_text(json.dumps({"model_type": "gpt2"})), "'gpt2' model, not a BERT-family"),
])
def test_non_bert_checkpoints_rejected(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(UserError, match=message):
        load_teacher_config(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        load_teacher_config(tmp_path / "missing-model")


def test_probes_learn_a_separable_layer():
    # Layer 1 carries the label, layer 2 is noise: probe 1 must fit, probe 2 cannot.
    torch.manual_seed(0)
    labels = torch.randint(0, 2, (400,))
    pooled = torch.randn(400, 2, 8)
    pooled[:, 0, 0] += 4 * (labels * 2 - 1)
    probes = train_probes(pooled, torch.zeros(400, 2), labels)
    acc = (probes(pooled, torch.zeros(400, 2)).argmax(-1) == labels[:, None]).float().mean(0)
    assert acc[0] > 0.95 and acc[1] < 0.75


@pytest.fixture(scope="module")
def teacher_copy(tmp_path_factory, minilm_dir):
    """The bundled MiniLM as an (unfine-tuned) teacher, in a directory we may alter."""
    path = tmp_path_factory.mktemp("teacher")
    shutil.copytree(minilm_dir, path, dirs_exist_ok=True)
    return path


@pytest.mark.parametrize("task", ["SST-2", "MRPC"])
def test_knowledge_store_contents(tmp_path, task, sst2, mrpc, teacher_copy):
    spec, data = get_task(task), {"SST-2": sst2, "MRPC": mrpc}[task]
    store = build_knowledge(spec, data, teacher_copy, AugmentConfig(copies=2, seed=1), tmp_path, progress=False)
    J, C = 6, 2
    train = store.data["train"]
    n = len(data["train"])
    assert store.meta["num_train_original"] == n and 0 < store.meta["num_train_augmented"] <= 2 * n
    assert len(train) == n + store.meta["num_train_augmented"]
    assert torch.tensor(train[0]["teacher_logits"]).shape == (J, C)
    assert train["label"][:n] == data["train"]["label"]
    assert set(train["label"][n:]) == {IGNORE_LABEL}
    assert len(store.meta["probe_dev_accuracy"]) == J
    batch = next(iter(store.loader("train", batch_size=5)))
    assert batch["teacher_logits"].shape == (5, J, C)
    assert ("input_ids_b" in batch) == spec.is_pair
    assert batch["input_ids_a"].shape == batch["attention_mask_a"].shape
    # Each row records its original: originals themselves, copies the example they were made from.
    origins = list(train["origin"])
    assert store.records_origins and origins[:n] == list(range(n))
    copies = origins[n:]
    assert copies == sorted(copies) and set(copies) <= set(range(n)) and max(Counter(copies).values()) <= 2

    def overlap(i, j):
        a, b = set(train[i]["input_ids_a"]), set(train[j]["input_ids_a"])
        return len(a & b) / len(a | b)

    own = statistics.mean(overlap(n + k, origin) for k, origin in enumerate(copies))
    other = statistics.mean(overlap(n + k, (origin + 1) % n) for k, origin in enumerate(copies))
    assert own > 0.4 and own > 2 * other


def test_holdout_split_keeps_each_example_with_its_copies_on_one_side():
    origins = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0, 1, 3, 3, 3, 7, 9]
    rows = datasets.Dataset.from_dict({"origin": origins, "row": list(range(len(origins)))})
    kept, held = holdout_split(rows, 0.3, seed=4)
    assert sorted([*kept["row"], *held["row"]]) == list(range(len(origins)))  # every row, once
    assert not set(kept["origin"]) & set(held["origin"])                   # no example on both sides
    assert len(set(held["origin"])) == 3 and len(set(kept["origin"])) == 7
    assert list(holdout_split(rows, 0.3, seed=4)[1]["row"]) == list(held["row"])
    assert list(holdout_split(rows, 0.3, seed=5)[1]["row"]) != list(held["row"])
    assert len(set(holdout_split(rows, 0.01)[1]["origin"])) == 1              # at least one each way
    assert len(set(holdout_split(rows, 0.99)[0]["origin"])) == 1


def test_teacher_features_batched_by_length_equal_one_example_at_a_time(sst2, teacher_copy):
    """Sorted into batches of similar lengths and padded, each row still gets its own features, in order."""
    spec = get_task("SST-2")
    teacher = load_finetuned_teacher(teacher_copy, spec).cpu()
    rows = tokenize(sst2["train"].select(range(10)), load_tokenizer(teacher_copy), spec)
    pooled, logits = teacher_features(teacher, rows, batch_size=4, progress=False, precision="fp32")
    assert pooled.shape == (10, 5, teacher.config.hidden_size) and logits.shape == (10, 2)
    for i in (0, 3, 9):
        alone_pooled, alone_logits = teacher_features(teacher, rows.select([i]), progress=False, precision="fp32")
        torch.testing.assert_close(pooled[i], alone_pooled[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(logits[i], alone_logits[0], atol=1e-4, rtol=1e-4)


def test_bf16_teacher_passes_stay_close_to_fp32_and_name_another_store(sst2, teacher_copy):
    """bf16 autocast (the default where the CPU computes bf16 natively) changes the teacher's outputs
    by rounding only, and a store built with it never passes for an fp32 one."""
    spec = get_task("SST-2")
    teacher = load_finetuned_teacher(teacher_copy, spec).cpu()
    rows = tokenize(sst2["train"].select(range(16)), load_tokenizer(teacher_copy), spec)
    pooled, logits = teacher_features(teacher, rows, progress=False, precision="fp32")
    pooled16, logits16 = teacher_features(teacher, rows, progress=False, precision="bf16")
    assert pooled16.dtype == logits16.dtype == torch.float32
    assert 0 < (logits16 - logits).abs().max() < 0.15 and (pooled16 - pooled).abs().max() < 0.15
    assert inference_precision("cpu", "auto") == ("bf16" if bf16_native("cpu") else "fp32")
    with pytest.raises(UserError, match="inference precision"):
        inference_precision("cpu", "fp16")
    fp32_name, fp32_inputs = knowledge.knowledge_fingerprint(spec, sst2, teacher_copy, None, ProbeConfig())
    bf16_name, bf16_inputs = knowledge.knowledge_fingerprint(spec, sst2, teacher_copy, None, ProbeConfig(),
                                                             precision="bf16")
    assert "teacher_precision" not in fp32_inputs and bf16_inputs["teacher_precision"] == "bf16"
    assert fp32_name != bf16_name
    # The default number of augmented copies names the store its build makes, resolved for the train set.
    copies = default_copies(len(sst2["train"]))
    assert (knowledge.knowledge_fingerprint(spec, sst2, teacher_copy, AugmentConfig(), ProbeConfig())
            == knowledge.knowledge_fingerprint(spec, sst2, teacher_copy, AugmentConfig(copies=copies), ProbeConfig()))


def test_the_store_keeps_what_students_need_of_the_teacher(tmp_path, sst2, teacher_copy):
    store = build_knowledge(get_task("SST-2"), sst2, teacher_copy, None, tmp_path, progress=False)
    own = store.path / knowledge.TEACHER_FILES
    assert store.teacher_files == own and (own / "tokenizer.json").is_file()
    assert torch.equal(store.word_embeddings(), teacher_word_embeddings(teacher_copy))
    assert store.meta["teacher_info"] == {}  # a base checkpoint: no adabert_teacher.json to keep
    assert len(store.tokenizer) == store.meta["vocab_size"]


def test_knowledge_cache_hit_and_rebuild(tmp_path, sst2, teacher_copy, monkeypatch):
    spec = get_task("SST-2")
    first = build_knowledge(spec, sst2, teacher_copy, None, tmp_path, progress=False)

    # Same inputs: loaded from disk, the teacher does not run.
    calls = []
    real_features = knowledge.teacher_features
    monkeypatch.setattr(knowledge, "teacher_features", lambda *a, **k: calls.append(1) or real_features(*a, **k))
    again = build_knowledge(spec, sst2, teacher_copy, None, tmp_path, progress=False)
    assert again.path == first.path and calls == []
    assert again.data["train"]["teacher_logits"] == first.data["train"]["teacher_logits"]

    # Other data: a new store.
    other = dict(sst2, train=sst2["train"].select(range(40)))
    assert build_knowledge(spec, other, teacher_copy, None, tmp_path, progress=False).path != first.path
    assert calls, "the teacher must run for new data"

    # Other augmentation settings: a new store.
    calls.clear()
    aug = build_knowledge(spec, sst2, teacher_copy, AugmentConfig(copies=1), tmp_path, progress=False)
    assert aug.path != first.path and calls

    # The default number of copies is resolved for the train set before the fingerprint: the same store
    # as the number written out (20 for 5 examples).
    few = dict(sst2, train=sst2["train"].select(range(5)))
    default = build_knowledge(spec, few, teacher_copy, AugmentConfig(), tmp_path, progress=False)
    assert default.meta["inputs"]["augment"]["copies"] == 20
    assert default.meta["num_train_augmented"] > 5 * 15   # up to 20 copies each
    calls.clear()
    explicit = build_knowledge(spec, few, teacher_copy, AugmentConfig(copies=20), tmp_path, progress=False)
    assert explicit.path == default.path and calls == []

    # Other teacher weights: a new store, with other logits.
    weights = load_file(str(teacher_copy / "model.safetensors"))
    weights["pooler.dense.bias"] = weights["pooler.dense.bias"] + 0.5
    save_file(weights, str(teacher_copy / "model.safetensors"), metadata={"format": "pt"})
    changed = build_knowledge(spec, sst2, teacher_copy, None, tmp_path, progress=False)
    assert changed.path != first.path
    assert changed.data["dev"]["teacher_logits"] != first.data["dev"]["teacher_logits"]


def test_a_shared_store_is_read_with_the_runs_own_teacher(runs, tmp_path):
    """Two teacher runs with identical inputs share one store, whose meta names the first run's
    teacher. With that directory gone, the second run still searches and evaluates: a store is
    read with the teacher of the run it was opened through."""
    from nni_adabert.cli import main
    from nni_adabert.teacher.run import open_teacher_run

    original = open_teacher_run(runs / "SST-2")
    store = tmp_path / "store"
    shutil.copytree(original.path, store)
    meta = json.loads((store / "meta.json").read_text())
    meta["teacher_dir"] = str(tmp_path / "moved-away" / "teacher")
    (store / "meta.json").write_text(json.dumps(meta))
    second = tmp_path / "second"
    shutil.copytree(runs / "SST-2", second, ignore=shutil.ignore_patterns("teacher_train"))
    record = json.loads((second / "probes.json").read_text())
    (second / "probes.json").write_text(json.dumps({**record, "knowledge_store": str(store)}))

    assert open_teacher_run(second).meta["teacher_dir"] == str((second / "teacher").resolve())
    out = tmp_path / "student"
    assert main(["search", "--teacher", str(second), "--output-dir", str(out), "--epochs", "1", "--batch-size", "32",
                 "--no-progress"]) == 0
    assert main(["evaluate", "--teacher", str(second), "--arch", str(out)]) == 0


def test_a_teacher_run_started_again_says_it_reused_the_teacher(runs, glue_dir, capsys):
    from conftest import glue_slice
    from nni_adabert.cli import main

    data = runs / "glue"
    argv = ["teacher", "--task", "SST-2", "--data", str(data), "--epochs", "1", "--batch-size", "16",
            "--aug-copies", "1", "--output-dir", str(runs / "SST-2"), "--cache-dir", str(runs / "cache"),
            "--no-progress"]
    glue_slice(glue_dir, data, "SST-2", 64, 32)   # as the fixture made it
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"reused the fine-tuned teacher in {runs / 'SST-2' / 'teacher'}" in out and "saved the" not in out


def test_a_fine_tuned_teacher_is_taken_as_it_is_with_its_classes_matched(runs, tmp_path, capsys):
    """`teacher --model DIR --epochs 0`: no fine-tuning; a checkpoint whose classes are in another
    order (and named otherwise) gives the same teacher once they are matched by name or --label-map."""
    from nni_adabert.cli import main

    original = json.loads((runs / "SST-2" / "probes.json").read_text())["teacher"]["dev_metrics"]
    swapped = tmp_path / "swapped"
    shutil.copytree(runs / "SST-2" / "teacher", swapped)
    weights = load_file(str(swapped / "model.safetensors"))
    for key in ("classifier.weight", "classifier.bias"):
        weights[key] = weights[key].flip(0).contiguous()
    save_file(weights, str(swapped / "model.safetensors"))
    config = json.loads((swapped / "config.json").read_text())
    config.update(id2label={"0": "POSITIVE", "1": "NEGATIVE"}, label2id={"POSITIVE": 0, "NEGATIVE": 1})
    (swapped / "config.json").write_text(json.dumps(config))

    def teacher(*extra):
        return main(["teacher", "--task", "SST-2", "--data", str(runs / "glue"), "--model", str(swapped),
                     "--epochs", "0", "--aug-copies", "0", "--output-dir", str(tmp_path / "run"),
                     "--cache-dir", str(tmp_path / "cache"), "--no-progress", *extra])

    capsys.readouterr()
    assert teacher() == 2
    assert "labels ['NEGATIVE', 'POSITIVE'] are not the task's ['0', '1']; say which is which with --label-map" \
        in capsys.readouterr().err
    assert teacher("--label-map", "NEGATIVE=0,POSITIVE=2") == 2
    assert teacher("--label-map", "NEGATIVE=0,POSITIVE=1") == 0
    printed = capsys.readouterr().out
    info = json.loads((tmp_path / "run" / "probes.json").read_text())["teacher"]
    assert info["dev_metrics"] == pytest.approx(original)   # the same classifier, its classes put back in order
    assert "(always the majority class: accuracy" in printed
    assert not (tmp_path / "run" / "teacher_train" / "checkpoints").exists()   # nothing was trained

    # One run's fine-tuned teacher given to another as it is: the same dev metric and the same
    # knowledge (its store's fingerprint covers the weights, the data and the settings: the same store).
    capsys.readouterr()
    assert main(["teacher", "--task", "SST-2", "--data", str(runs / "glue"), "--model", str(runs / "SST-2" / "teacher"),
                 "--no-finetune", "--aug-copies", "1", "--output-dir", str(tmp_path / "again"), "--cache-dir",
                 str(runs / "cache"), "--no-progress"]) == 0
    again = json.loads((tmp_path / "again" / "probes.json").read_text())
    assert again["teacher"]["dev_metrics"] == pytest.approx(original)
    assert again["teacher"]["train_seconds"] is None                 # taken as it is: nothing trained
    assert again["knowledge_store"] == json.loads((runs / "SST-2" / "probes.json").read_text())["knowledge_store"]
    assert main(["teacher", "--task", "SST-2", "--model", str(swapped), "--no-finetune", "--epochs", "2",
                 "--output-dir", str(tmp_path / "never")]) == 2
    assert "--no-finetune takes --model as it is: drop --epochs 2" in capsys.readouterr().err
    with pytest.raises(UserError, match="the bundled MiniLM is not one"):
        finetune_teacher(get_task("SST-2"), load_task("SST-2", runs / "glue"), None, tmp_path / "x",
                         TeacherConfig(epochs=0))
