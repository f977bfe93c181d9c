"""Deployment: BatchNorm folded into the convolutions, ONNX export checked on real MRPC rows."""

import json
import os

import datasets
import pytest
import torch
import torch.nn as nn

from nni_adabert import atomic

from nni_adabert.workflows import deploy
from nni_adabert.cli import main
from nni_adabert.data.glue import load_task
from nni_adabert.data.encoding import pad_batch, tokenize
from nni_adabert.workflows.deploy import ONNX_FILE, OnnxStudent, export_onnx, fold_batchnorm, open_deployed
from nni_adabert.errors import UserError
from nni_adabert.workflows.export import ARCH_FILE, read_architecture, write_student
from nni_adabert.teacher.knowledge import FORMAT_VERSION
from nni_adabert.model.ops import ReLUConvBN
from nni_adabert.model.space import AdaBertStudent, StudentConfig
from nni_adabert.data.tasks import get_task
from nni_adabert.teacher.finetune import load_tokenizer

# Every conv kind, both poolings and a skip; two cells: 12 Conv+BatchNorm pairs.
ARCH = {"edge_2_0": "std_conv_3", "edge_2_1": "dil_conv_5", "edge_3_0": "std_conv_7", "edge_3_1": "max_pool_3",
        "edge_3_2": "dil_conv_3", "edge_4_0": "avg_pool_3", "edge_4_1": "std_conv_5", "edge_4_2": "dil_conv_7",
        "edge_4_3": "skip", "depth": 2}
# One conv and a max pool in one cell: exports in half the time, for the tests of the write itself.
SMALL_ARCH = {**{label: "zero" for label in ARCH if label != "depth"},
              "edge_2_1": "dil_conv_3", "edge_3_2": "skip", "edge_4_3": "max_pool_3", "depth": 1}
CONFIG = StudentConfig(vocab_size=30522, num_labels=2, is_pair=True, embed_dim=16, k_max=2)
KEYS = ("input_ids_a", "input_ids_b")


@pytest.fixture(scope="module")
def rows(glue_dir, minilm_dir):
    """48 real MRPC dev pairs, tokenized as the knowledge store holds them."""
    spec = get_task("MRPC")
    dev = tokenize(load_task(spec, glue_dir)["dev"].select(range(48)), load_tokenizer(minilm_dir), spec)
    return dev.select_columns([*KEYS, "label"])


def make_student(arch):
    """A student whose BatchNorms are far from identity (learned-looking statistics and affine)."""
    torch.manual_seed(0)
    model = AdaBertStudent(CONFIG, arch).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.2, 3.0)
            m.weight.data.normal_(1.0, 0.5)
            m.bias.data.normal_(0, 0.5)
    return model


@pytest.fixture(scope="module")
def student(one_thread):
    return make_student(ARCH)


@pytest.fixture(scope="module")
def small(one_thread):
    return make_student(SMALL_ARCH)


def batches(rows, start, stop, size):
    part = list(rows.select(range(start, stop)))
    return [pad_batch(part[i:i + size], KEYS) for i in range(0, len(part), size)]


def logits(model, batch):
    with torch.no_grad():
        return model(**batch, return_probes=False).logits


@pytest.fixture(scope="module")
def exported(student, rows, tmp_path_factory):
    path = tmp_path_factory.mktemp("deploy") / ONNX_FILE
    report = export_onnx(student, path, batches(rows, 0, 24, 16), {"weights_sha256": "abc"})
    return path, report


def test_fold_batchnorm_preserves_logits(student, rows):
    folded = fold_batchnorm(student)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert sum(isinstance(m, deploy.FoldedReLUConv) for m in folded.modules()) == 12
    assert sum(isinstance(m, ReLUConvBN) for m in student.modules()) == 12  # the original is untouched
    conv, folded_conv = student.cells[0].edges["edge_2_0"].conv, folded.cells[0].edges["edge_2_0"].conv
    assert conv.bias is None and folded_conv.bias is not None
    assert not torch.allclose(conv.weight, folded_conv.weight)  # the BatchNorm scale went into the weights
    for batch in batches(rows, 0, 48, 16):
        ref = logits(student, batch)
        assert ref.std() > 0.05  # the check below compares real, example-dependent numbers
        torch.testing.assert_close(logits(folded, batch), ref, atol=1e-5, rtol=0)


def test_onnx_round_trip_same_logits(exported, student, rows):
    path, report = exported
    assert report["batchnorms_folded"] == 12 and report["checked_examples"] == 24
    assert report["onnx_max_abs_diff"] < 1e-5 and report["folded_max_abs_diff"] < 1e-5
    assert report["bytes"] == path.stat().st_size > 30522 * 16 * 4  # the embedding is in the file
    onnx_student = OnnxStudent(path, threads=1)
    assert onnx_student.id_keys == KEYS and onnx_student.metadata["weights_sha256"] == "abc"
    # Other rows, batch sizes and lengths than the export saw (dynamic axes; a and b of different lengths).
    checked = batches(rows, 24, 48, 7) + batches(rows, 0, 1, 1)
    assert any(b["input_ids_a"].shape[1] != b["input_ids_b"].shape[1] for b in checked)
    for batch in checked:
        torch.testing.assert_close(onnx_student(batch), logits(student, batch), atol=1e-4, rtol=0)


def test_a_max_pooled_student_exports_and_gives_its_logits(rows, tmp_path, one_thread):
    """Max over the real tokens (padding masked) survives the ONNX export, on batches of other lengths."""
    torch.manual_seed(0)
    student = AdaBertStudent(StudentConfig(**{**CONFIG.to_dict(), "pooling": "max"}), SMALL_ARCH).eval()
    mean_pooled = AdaBertStudent(CONFIG, SMALL_ARCH).eval()
    mean_pooled.load_state_dict(student.state_dict())
    batch = batches(rows, 0, 16, 16)[0]
    assert not torch.allclose(logits(student, batch), logits(mean_pooled, batch))
    path = tmp_path / ONNX_FILE
    report = export_onnx(student, path, batches(rows, 0, 8, 8))
    assert report["onnx_max_abs_diff"] < 1e-5
    onnx_student = OnnxStudent(path, threads=1)
    for batch in batches(rows, 8, 24, 5):
        torch.testing.assert_close(onnx_student(batch), logits(student, batch), atol=1e-4, rtol=0)


def test_bad_onnx_files_are_user_errors(exported, tmp_path):
    good = exported[0].read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(good[: len(good) // 2])
    (tmp_path / "garbage.onnx").write_bytes(b"not a protobuf at all" * 10)
    for name in ("truncated.onnx", "garbage.onnx"):
        with pytest.raises(UserError, match=f"{name} is not a readable ONNX model"):
            OnnxStudent(tmp_path / name)
    with pytest.raises(UserError, match="nowhere.onnx does not exist"):
        OnnxStudent(tmp_path / "nowhere.onnx")
    # A valid ONNX model that is not a student: logits = identity(input_ids_a).
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["input_ids_a"], ["logits"])], "other",
                              [helper.make_tensor_value_info("input_ids_a", TensorProto.INT64, ["B", "L"])],
                              [helper.make_tensor_value_info("logits", TensorProto.INT64, ["B", "L"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10),
              tmp_path / "other.onnx")
    with pytest.raises(UserError, match="other.onnx is an ONNX model but not a deployed nni-adabert student"):
        OnnxStudent(tmp_path / "other.onnx")


def test_failed_checks_write_nothing(small, rows, tmp_path, monkeypatch):
    out = tmp_path / ONNX_FILE
    out.write_bytes(b"previous export")
    real_fold = deploy.fold_batchnorm

    def broken_fold(model):  # a folding bug: one BatchNorm shift lost
        folded = real_fold(model)
        folded.cells[0].edges["edge_2_1"].conv.bias.data.zero_()
        return folded

    monkeypatch.setattr(deploy, "fold_batchnorm", broken_fold)
    with pytest.raises(UserError, match=r"BatchNorm folded does not reproduce the eager student's logits on 3 dev"):
        export_onnx(small, out, batches(rows, 0, 3, 3))
    assert out.read_bytes() == b"previous export" and sorted(os.listdir(tmp_path)) == [ONNX_FILE]

    monkeypatch.setattr(deploy, "fold_batchnorm", real_fold)
    real_call = OnnxStudent.__call__
    monkeypatch.setattr(OnnxStudent, "__call__", lambda self, b: real_call(self, b) + 2e-4)  # a wrong graph
    with pytest.raises(UserError, match=r"ONNX graph does not reproduce .* \(largest difference 2\.0\de-04"):
        export_onnx(small, out, batches(rows, 0, 3, 3))
    assert out.read_bytes() == b"previous export" and sorted(os.listdir(tmp_path)) == [ONNX_FILE]


@pytest.fixture
def arch_dir(small, rows, tmp_path, minilm_dir):
    """An exported student with its knowledge store (real dev rows) and teacher run, as the CLI finds them."""
    store = tmp_path / "store"
    datasets.DatasetDict({"dev": rows}).save_to_disk(str(store / "data"))
    (store / "meta.json").write_text(json.dumps({"format": FORMAT_VERSION, "task": "MRPC",
                                                 "teacher_dir": str(minilm_dir)}))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "probes.json").write_text(json.dumps({"knowledge_store": str(store)}))
    write_student(tmp_path / "student", small, {"task": "MRPC", "knowledge_store": str(store)},
                  tokenizer=load_tokenizer(minilm_dir))
    return tmp_path / "student"


def test_cli_deploy_writes_atomically(arch_dir, small, rows, monkeypatch, capsys):
    target = arch_dir / ONNX_FILE
    renames = []
    real_replace = os.replace

    def replace(src, dst):  # the file appears by one rename of a complete temporary file
        renames.append((os.path.basename(os.path.dirname(src)), dst, os.path.exists(dst), os.path.getsize(src)))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    assert main(["deploy", "--arch", str(arch_dir)]) == 0
    assert [(d, s) for _, d, _, s in renames] == [(target, target.stat().st_size)]
    assert renames[0][0].startswith(".tmp-") and renames[0][2] is False
    assert not [p for p in os.listdir(arch_dir) if p.startswith(".tmp-")]
    printed = capsys.readouterr().out
    assert "folded 1 BatchNorm layers" in printed and "on 24 dev examples" in printed and str(target) in printed
    deployed = open_deployed(None, read_architecture(arch_dir))  # the default file, recorded as these weights'
    batch = batches(rows, 30, 40, 10)[0]
    torch.testing.assert_close(deployed(batch), logits(small, batch), atol=1e-4, rtol=0)


def test_cli_evaluate_with_broken_deployed_model_exits_2(arch_dir, tmp_path, capsys):
    (arch_dir / ONNX_FILE).write_bytes(b"\x08\x07truncated")
    result = tmp_path / "result.json"
    assert main(["evaluate", "--arch", str(arch_dir), "--teacher", str(tmp_path / "run"), "--deployed",
                 "--json", str(result)]) == 2
    assert f"{arch_dir / ONNX_FILE} is not a readable ONNX model" in capsys.readouterr().err
    assert not result.exists()


def test_deployed_model_of_other_weights_rejected(arch_dir, exported):
    with pytest.raises(UserError, match="was exported from other weights"):
        open_deployed(exported[0], read_architecture(arch_dir / ARCH_FILE))


def test_int8_graph_is_written_evaluated_and_predicts(runs, tmp_path, capsys):
    """`deploy --int8`: ONNX Runtime's dynamic quantization beside the fp32 graph; `evaluate
    --deployed` reports both, `predict --onnx` runs either."""
    arch_dir = tmp_path / "student"
    assert main(["search", "--teacher", str(runs / "MRPC"), "--output-dir", str(arch_dir), "--epochs", "1",
                 "--warmup-epochs", "0", "--batch-size", "16", "--k-max", "2", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["deploy", "--arch", str(arch_dir), "--int8"]) == 0
    printed = capsys.readouterr().out
    int8 = arch_dir / "student.int8.onnx"
    assert int8.is_file() and int8.stat().st_size < (arch_dir / ONNX_FILE).stat().st_size
    agreement = float(printed.split("the same class as the eager student on ")[1].split("%")[0])
    assert 50 <= agreement <= 100
    result = tmp_path / "result.json"
    assert main(["evaluate", "--arch", str(arch_dir), "--teacher", str(runs / "MRPC"), "--deployed", "--speed",
                 "--json", str(result)]) == 0
    doc = json.loads(result.read_text())
    assert doc["deployed_int8"]["path"] == str(int8) and set(doc["deployed_int8"]["dev_metrics"]) == {"f1", "accuracy"}
    assert doc["deployed_int8"]["seconds"] > 0 and "deployed int8" in capsys.readouterr().out
    pairs = ["--text", "He left.", "--text-pair", "He went away.", "--text", "A cat.", "--text-pair", "Stocks fell."]
    for onnx in (str(int8), None):
        assert main(["predict", "--student", str(arch_dir), *pairs, *(["--onnx", onnx] if onnx else [])]) == 0
        out = capsys.readouterr()
        assert [json.loads(line)["label"] in ("0", "1") for line in out.out.splitlines()] == [True, True]
        assert ("ONNX Runtime" in out.err) == bool(onnx)


def test_matching_space_student_round_trips_through_onnx(rows, tmp_path, one_thread):
    """The pair's two texts stacked in one batch and ``align`` across them export with dynamic shapes."""
    config = StudentConfig(vocab_size=30522, num_labels=2, is_pair=True, space="matching", embed_dim=16, k_max=2)
    arch = {**{label: "zero" for label in ARCH if label != "depth"},
            "edge_2_0": "align", "edge_2_1": "std_conv_3", "edge_3_2": "align", "edge_4_3": "max_pool_3", "depth": 2}
    torch.manual_seed(0)
    model = AdaBertStudent(config, arch).eval()
    report = export_onnx(model, tmp_path / ONNX_FILE, batches(rows, 0, 24, 16), {})
    assert report["onnx_max_abs_diff"] < 1e-4
    onnx_student = OnnxStudent(tmp_path / ONNX_FILE, threads=1)
    for batch in batches(rows, 24, 48, 7) + batches(rows, 0, 1, 1):   # other batch sizes and lengths
        torch.testing.assert_close(onnx_student(batch), logits(model, batch), atol=1e-4, rtol=0)
