"""Exported students: JSON + safetensors round trip, and strict loading."""

import json

import pytest
import torch

from nni_adabert.errors import UserError
from nni_adabert.workflows.export import (ARCH_FILE, CELL_FILE, WEIGHTS_FILE, load_student, read_architecture,
                                          write_student)
from nni_adabert.model.space import AdaBertStudent, StudentConfig, random_arch

CONFIG = StudentConfig(vocab_size=50, num_labels=2, is_pair=True, embed_dim=16, k_max=4)


def make_student(seed=0):
    torch.manual_seed(seed)
    return AdaBertStudent(CONFIG, random_arch(CONFIG, seed=seed)).eval()


@pytest.fixture
def exported(tmp_path):
    student = make_student()
    write_student(tmp_path, student, {"task": "MRPC", "vocab": {"size": 50, "fingerprint": "abc"}})
    return tmp_path, student


def inputs():
    g = torch.Generator().manual_seed(1)
    ids_a, ids_b = torch.randint(1, 50, (3, 7), generator=g), torch.randint(1, 50, (3, 5), generator=g)
    return dict(input_ids_a=ids_a, attention_mask_a=torch.ones_like(ids_a),
                input_ids_b=ids_b, attention_mask_b=torch.ones_like(ids_b))


def test_round_trip_gives_same_logits(exported):
    out_dir, student = exported
    assert {p.name for p in out_dir.iterdir()} == {ARCH_FILE, WEIGHTS_FILE, CELL_FILE}
    arch_file = read_architecture(out_dir, vocab="abc")
    assert arch_file.arch == student.arch and arch_file.config == CONFIG
    loaded = load_student(arch_file)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs()).logits, student(**inputs()).logits)


def edit_json(out_dir, change):
    doc = json.loads((out_dir / ARCH_FILE).read_text())
    change(doc)
    (out_dir / ARCH_FILE).write_text(json.dumps(doc))


def test_same_student_gives_byte_identical_weights(tmp_path):
    # The file's SHA-256 goes into architecture.json; a resumed run must reproduce it.
    student = make_student()
    docs = [write_student(tmp_path / str(i), student, {"task": "MRPC"}) for i in range(8)]
    assert len({doc["weights_sha256"] for doc in docs}) == 1


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(version=99), "format version 99 is not one we know"),
    (lambda d: d.update(format="something-else"), "field 'format' is 'something-else'"),
    (lambda d: d["architecture"].update(edge_2_0="lstm"), "edge 'edge_2_0' has unknown op 'lstm'"),
    (lambda d: d["architecture"].pop("edge_4_3"), "missing edge 'edge_4_3'"),
    (lambda d: d["architecture"].update(depth=9), r"depth must be an integer in 1\.\.4, got 9"),
    (lambda d: d["architecture"].update(depth=0), r"depth must be an integer in 1\.\.4, got 0"),
    (lambda d: d.pop("architecture"), "field 'architecture' is missing"),
])
def test_bad_architecture_json(exported, change, message):
    out_dir, _ = exported
    edit_json(out_dir, change)
    with pytest.raises(UserError, match=message) as err:
        read_architecture(out_dir / ARCH_FILE)
    assert ARCH_FILE in str(err.value)


def test_not_json_and_missing(tmp_path):
    (tmp_path / ARCH_FILE).write_text("{not json")
    with pytest.raises(UserError, match="is not a JSON file"):
        read_architecture(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        read_architecture(tmp_path / "nowhere.json")


def test_vocabulary_mismatch(exported):
    with pytest.raises(UserError, match="another vocabulary"):
        read_architecture(exported[0], vocab="other")


def test_tampered_or_truncated_weights_rejected(exported):
    out_dir, _ = exported
    weights = out_dir / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match="does not match the checksum"):
        load_student(read_architecture(out_dir))
    weights.write_bytes(bytes(data[: len(data) // 2]))
    edit_json(out_dir, lambda d: d.pop("weights_sha256"))
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_student(read_architecture(out_dir))


def test_weights_of_another_architecture_rejected(exported, tmp_path_factory):
    out_dir, student = exported
    other_dir = tmp_path_factory.mktemp("other")
    other = AdaBertStudent(CONFIG, {**student.arch, "depth": 1 + student.arch["depth"] % 4})
    write_student(other_dir, other, {"task": "MRPC"})
    with pytest.raises(UserError, match="do not match the architecture"):
        load_student(read_architecture(out_dir), weights=other_dir / WEIGHTS_FILE)


def test_weights_without_a_checksum_load_with_a_warning(exported, tmp_path, caplog):
    """Weights the JSON has no checksum for (another file given, or none recorded) still load,
    checked against the architecture, and the log says that no checksum was checked."""
    out_dir, student = exported
    other = tmp_path / "copy.safetensors"
    other.write_bytes((out_dir / WEIGHTS_FILE).read_bytes())
    with caplog.at_level("WARNING", logger="nni_adabert"):
        load_student(read_architecture(out_dir), weights=other)
    assert f"{other}: no checksum to check it against (not the file the architecture was exported with)" \
        in caplog.text
    edit_json(out_dir, lambda d: d.pop("weights_sha256"))
    caplog.clear()
    with caplog.at_level("WARNING", logger="nni_adabert"):
        load_student(read_architecture(out_dir))
    assert "records none" in caplog.text


def test_exported_files_get_the_usual_modes(exported):
    """Weights are as readable as every other file we write (safetensors made them owner-only)."""
    import os

    out_dir, _ = exported
    umask = os.umask(0)
    os.umask(umask)
    for name in (WEIGHTS_FILE, ARCH_FILE, CELL_FILE):
        assert (out_dir / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
