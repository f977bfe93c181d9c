"""Tasks and data: the committed slices of real data, the bundled sample, tokenization, bad input."""

import csv
import errno
import importlib.util
import logging
import random

import pytest
from conftest import DATA_DIR, FULL_TREC_DIR, GLUE_SLICE_DIR, write_tsv

from nni_adabert.data.glue import BUNDLED_DIR, GLUE_FILES, load_task, read_glue_tsv
from nni_adabert.data.encoding import pad_batch, row_lengths, student_id_keys, tokenize
from nni_adabert.errors import UserError
from nni_adabert.data.tasks import TASKS, get_task
from nni_adabert.teacher.finetune import load_tokenizer
from nni_adabert.teacher.knowledge import row_loader
from lightning_fabric.utilities.distributed import DistributedSamplerWrapper

from nni_adabert import training
from nni_adabert.training import EpochLengthGroupedSampler


def bundled_train_rows() -> list[int]:
    """The rows of GLUE's SST-2 train.tsv in the bundled train.tsv, in its order: the first 8,000
    of random.Random(0).shuffle over all 67,349 (the bundled SOURCE.md)."""
    rows = list(range(67_349))
    random.Random(0).shuffle(rows)
    return rows[:8_000]


def test_committed_slices_row_counts():
    sst2 = load_task("SST-2", GLUE_SLICE_DIR)
    assert (len(sst2["train"]), len(sst2["dev"])) == (200, 100)
    mrpc = load_task("mrpc", GLUE_SLICE_DIR / "MRPC")  # the task folder itself works too
    assert (len(mrpc["train"]), len(mrpc["dev"])) == (200, 100)
    # Quotes inside sentences are text, not CSV quoting (which would merge two of these rows).
    assert mrpc["train"][0]["text_a"].startswith('Amrozi accused his brother , whom he called " the witness "')
    with open(GLUE_SLICE_DIR / "MRPC" / "train.tsv", encoding="utf-8-sig", newline="") as f:
        assert len(list(csv.reader(f, delimiter="\t"))) == 1 + 199
    assert sorted(set(sst2["dev"]["label"])) == [0, 1] == sorted(set(mrpc["dev"]["label"]))


def test_committed_slices_are_the_first_rows_of_the_full_files(full_glue_dir):
    sst2 = load_task("SST-2", full_glue_dir)
    assert (len(sst2["train"]), len(sst2["dev"])) == (67_349, 872)
    mrpc = load_task("MRPC", full_glue_dir)
    assert (len(mrpc["train"]), len(mrpc["dev"])) == (3_668, 408)
    for name in ("SST-2/train.tsv", "SST-2/dev.tsv", "MRPC/train.tsv", "MRPC/dev.tsv"):
        part = (GLUE_SLICE_DIR / name).read_bytes()
        assert (full_glue_dir / name).read_bytes().startswith(part) and part.endswith(b"\n"), name
    # The bundled sample is real SST-2, all of it (test_bundled_sample_is_real_sst2 checks the slice's rows).
    bundled = load_task("SST-2")
    assert bundled["dev"]["text_a"] == sst2["dev"]["text_a"]
    picked = sst2["train"].select(bundled_train_rows())
    assert bundled["train"]["text_a"] == picked["text_a"] and bundled["train"]["label"] == picked["label"]


def test_make_slices_writes_the_committed_slices(full_glue_dir, tmp_path):
    if not (FULL_TREC_DIR / "TREC_10.label").is_file():
        pytest.skip(f"full TREC data not at {FULL_TREC_DIR} (set TREC_DIR)")
    spec = importlib.util.spec_from_file_location("make_slices", DATA_DIR / "make_slices.py")
    make_slices = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_slices)
    make_slices.make_slices(full_glue_dir, FULL_TREC_DIR, tmp_path)
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert len(written) == 6
    assert all((tmp_path / p).read_bytes() == (DATA_DIR / p).read_bytes() for p in written)


def test_trec_slices_hold_every_coarse_class():
    for name, lines in (("train.label", 200), ("test.label", 103)):
        text = (DATA_DIR / "trec" / name).read_text(encoding="ascii").splitlines()
        assert len(text) == lines
        assert {line.split(":", 1)[0] for line in text} == {"ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"}


def test_bundled_sample_is_real_sst2():
    bundled, real = load_task("SST-2"), load_task("SST-2", GLUE_SLICE_DIR)
    assert (len(bundled["train"]), len(bundled["dev"])) == (8_000, 872)
    assert bundled["dev"]["text_a"][:100] == real["dev"]["text_a"]  # all of GLUE's dev, in order
    # Train: those of the drawn rows that are among the slice's first 200 are those very rows.
    drawn = {at: row for at, row in enumerate(bundled_train_rows()) if row < len(real["train"])}
    assert len(drawn) == 35
    picked, source = bundled["train"].select(list(drawn)), real["train"].select(list(drawn.values()))
    assert picked["text_a"] == source["text_a"] and picked["label"] == source["label"]
    assert (BUNDLED_DIR / "SST-2" / "SOURCE.md").is_file()


def test_task_registry():
    assert set(TASKS) == {"SST-2", "MRPC", "QQP", "MNLI", "QNLI", "RTE"}
    assert get_task("sst2") is get_task("SST-2") is get_task("sst_2")
    assert get_task("MNLI").num_labels == 3 and GLUE_FILES["MNLI"].tsv_dev_file == "dev_matched.tsv"
    assert get_task("MRPC").metrics == ("f1", "accuracy") and get_task("QQP").is_pair
    assert not get_task("SST-2").is_pair
    assert set(GLUE_FILES) == set(TASKS)
    with pytest.raises(UserError, match="unknown task 'COLA'.*SST-2, MRPC.*or a task file"):
        get_task("COLA")


def test_pair_and_single_inputs(glue_dir, minilm_dir):
    tok = load_tokenizer(minilm_dir)
    mrpc_spec, sst_spec = get_task("MRPC"), get_task("SST-2")
    mrpc = tokenize(load_task(mrpc_spec, glue_dir)["dev"].select(range(8)), tok, mrpc_spec)
    sst = tokenize(load_task(sst_spec, glue_dir)["dev"].select(range(8)), tok, sst_spec)
    assert "input_ids_b" in mrpc.column_names and "input_ids_b" not in sst.column_names
    row = mrpc[0]
    # The teacher reads the packed pair, [CLS] a [SEP] b [SEP]; the student reads each text alone.
    assert row["input_ids"].count(tok.sep_token_id) == 2 and 1 in row["token_type_ids"]
    assert row["input_ids"] == row["input_ids_a"] + row["input_ids_b"][1:]
    assert sst[0]["input_ids"] == sst[0]["input_ids_a"]
    batch = pad_batch([mrpc[i] for i in range(4)], ("input_ids_a", "input_ids_b"))
    lengths = [len(mrpc[i]["input_ids_a"]) for i in range(4)]
    assert batch["input_ids_a"].shape == (4, max(lengths))
    assert batch["attention_mask_a"].sum(1).tolist() == lengths


def test_tokenization_cached_with_datasets(tmp_path, glue_dir, minilm_dir):
    spec = get_task("MRPC")
    dev = load_task(spec, glue_dir)["dev"].select(range(10))
    tok = load_tokenizer(minilm_dir)
    first = tokenize(dev, tok, spec, cache_dir=tmp_path)
    assert len(list((tmp_path / "tokenized").glob("*.arrow"))) == 1

    class VocabOnly:  # same vocabulary, but tokenizing again would fail
        get_vocab = tok.get_vocab

        def __call__(self, *args, **kwargs):
            raise AssertionError("tokenized again instead of reading the cache")

    assert tokenize(dev, VocabOnly(), spec, cache_dir=tmp_path)["input_ids_b"] == first["input_ids_b"]
    tokenize(dev.select(range(5)), tok, spec, cache_dir=tmp_path)  # other texts: another cache file
    assert len(list((tmp_path / "tokenized").glob("*.arrow"))) == 2


def test_long_text_truncated_with_warning(tmp_path, minilm_dir, caplog):
    spec = get_task("SST-2")
    write_tsv(tmp_path / "train.tsv", ["sentence", "label"], [["word " * 300, "1"], ["short", "0"]])
    write_tsv(tmp_path / "dev.tsv", ["sentence", "label"], [["fine", "1"]])
    data = load_task(spec, tmp_path)
    with caplog.at_level(logging.WARNING):
        tok = tokenize(data["train"], load_tokenizer(minilm_dir), spec, max_length=128)
    assert len(tok[0]["input_ids"]) == 128 and len(tok[0]["input_ids_a"]) == 128
    assert "1 of 2 examples are longer than 128 tokens" in caplog.text


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"sentence\tlabel\n", "has a header but no rows"),
    (b"text\tlabel\nhello\t1\n", r"missing column\(s\) \['sentence'\].*found columns \['text', 'label'\]"),
    (b"sentence\tlabel\nhello\t1\nbye\t2\n", r"line 3: label '2' is not a SST-2 label; expected one of \['0', '1'\]"),
    (b"sentence\tlabel\nhello\t1\nbad row\n", r"line 3: 1 tab-separated fields, expected 2"),
    (b"sentence\tlabel\nh\xe9llo\t1\n", r"line 2: bytes that are not UTF-8"),
])
def test_bad_tsv_files(tmp_path, content, message):
    path = tmp_path / "train.tsv"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as err:
        read_glue_tsv(path, get_task("SST-2"))
    assert str(path) in str(err.value)


def test_missing_data(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_task("SST-2", tmp_path / "nope")
    with pytest.raises(UserError, match="no GLUE SST-2 files"):
        load_task("SST-2", tmp_path)
    write_tsv(tmp_path / "train.tsv", ["sentence", "label"], [["ok", "1"]])
    with pytest.raises(UserError, match=r"missing data file .*dev.tsv"):
        load_task("SST-2", tmp_path)
    with pytest.raises(UserError, match="no bundled sample for MRPC"):
        load_task("MRPC")


def test_tsv_rows_end_at_newlines_only(tmp_path):
    """U+2028, U+0085 and a lone carriage return are characters of a sentence, not line ends;
    CRLF line ends and blank lines at the end of the file are fine."""
    path = tmp_path / "train.tsv"
    path.write_bytes("sentence\tlabel\r\nfine\u2028day\t1\r\nbad\u0085 one\r x\t0\nok\t1\n\n\n".encode("utf-8"))
    columns = read_glue_tsv(path, get_task("SST-2"))
    assert columns == {"text_a": ["fine\u2028day", "bad\u0085 one\r x", "ok"], "label": [1, 0, 1]}


def test_a_failed_tokenization_leaves_no_temporary_cache_file(tmp_path, minilm_dir, monkeypatch):
    """A full disk while datasets writes the tokenized cache: the error goes up, and the temporary
    file datasets had started is gone (it stayed behind, with "nothing half-written" said)."""
    import datasets
    from datasets.arrow_writer import ArrowWriter
    from transformers import AutoTokenizer

    write_batch = ArrowWriter.write_batch

    def full_disk(self, *args, **kwargs):
        if getattr(self, "_batches_written", 0) >= 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._batches_written = 1
        return write_batch(self, *args, **kwargs)

    def finalize(self, *args, **kwargs):   # on a full disk, closing the file fails too
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ArrowWriter, "write_batch", full_disk)
    monkeypatch.setattr(ArrowWriter, "finalize", finalize)
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    ds = datasets.Dataset.from_dict({"text_a": [f"sentence {i}" for i in range(2500)], "label": [0] * 2500})
    with pytest.raises(OSError):
        tokenize(ds, tokenizer, get_task("SST-2"), cache_dir=tmp_path)
    assert [p.name for p in (tmp_path / "tokenized").iterdir()] == []


def student_rows(glue_dir, minilm_dir, task: str):
    """The tokenized train slice of ``task`` as a store's rows (ids, label, a teacher_logits column)."""
    spec = get_task(task)
    rows = tokenize(load_task(spec, glue_dir)["train"], load_tokenizer(minilm_dir), spec)
    rows = rows.select_columns([*student_id_keys(rows.column_names), "label"])
    return rows.map(lambda r: {"teacher_logits": [[0.0, 0.0]]})


def test_row_lengths_are_the_longest_text_of_each_row_in_selection_order(glue_dir, minilm_dir):
    rows = student_rows(glue_dir, minilm_dir, "MRPC").select([5, 0, 17])
    expected = [max(len(r["input_ids_a"]), len(r["input_ids_b"])) for r in rows]
    assert row_lengths(rows, ("input_ids_a", "input_ids_b")) == expected
    assert row_lengths(rows, ("input_ids_a",)) == [len(r["input_ids_a"]) for r in rows]


@pytest.mark.parametrize("task", ["SST-2", "MRPC"])
def test_length_grouped_batches_pad_less_and_keep_every_row_once(glue_dir, minilm_dir, task):
    rows = student_rows(glue_dir, minilm_dir, task)
    keys = student_id_keys(rows.column_names)
    lengths = row_lengths(rows, keys)

    def epoch(group_by_length: bool, epoch: int = 0):
        loader = row_loader(rows, 8, shuffle=True, seed=3, group_by_length=group_by_length)
        loader.sampler.set_epoch(epoch)
        order = list(loader.sampler)
        padded = sum(max(b[key].shape[1] for key in keys) * b[keys[0]].shape[0] for b in loader)
        return order, padded

    grouped, grouped_padded = epoch(True)
    plain, plain_padded = epoch(False)
    assert sorted(grouped) == list(range(len(rows))) == sorted(plain)  # each row once per epoch
    assert grouped_padded < plain_padded  # SST-2's slice: 1.3x its real tokens against 2.4x
    assert grouped_padded <= 1.5 * sum(lengths)
    # Seeded by (seed, epoch) alone: the same epoch again is the same order (also from the same sampler), the
    # next one another.
    assert epoch(True)[0] == grouped and epoch(True, epoch=1)[0] != grouped
    sampler = row_loader(rows, 8, shuffle=True, seed=3, group_by_length=True).sampler
    assert list(sampler) == list(sampler) == grouped


def test_a_students_grouped_batches_come_in_a_random_order_not_longest_to_shortest(glue_dir, minilm_dir):
    """transformers' order sorts each group of batches longest first, so an epoch ends on the shortest rows of
    its last group (and BatchNorm's running statistics with it); the student's loader keeps the same batches
    but shuffles their order."""
    rows = student_rows(glue_dir, minilm_dir, "SST-2").select(range(196))  # 24 full batches and one of 4
    lengths = row_lengths(rows, ("input_ids_a",))

    def batches(order):
        return [order[i:i + 8] for i in range(0, len(order), 8)]

    grouped = batches(list(EpochLengthGroupedSampler(8, lengths, seed=3)))
    shuffled = batches(list(row_loader(rows, 8, shuffle=True, seed=3, group_by_length=True).sampler))
    assert sorted(map(tuple, shuffled)) == sorted(map(tuple, grouped)) and shuffled != grouped
    assert shuffled[-1] == grouped[-1] and len(shuffled[-1]) == 4  # the short batch stays last: cuts stay aligned
    # In transformers' order the batches' longest rows only go up where a group of 6 batches starts; shuffled,
    # they go up and down.
    def rises(order):
        longest = [max(lengths[i] for i in batch) for batch in order[:-1]]
        return sum(b > a for a, b in zip(longest, longest[1:]))

    assert rises(grouped) <= 4 < rises(shuffled)


def test_under_ddp_each_process_reads_whole_grouped_batches(glue_dir, minilm_dir, monkeypatch):
    """With --devices 2 Lightning wraps the sampler in a DistributedSampler that hands rank r every
    second position: each process must still read whole batches of the grouped order (as little padding
    as one process), together every row once."""
    rows = student_rows(glue_dir, minilm_dir, "SST-2").select(range(196))
    lengths = row_lengths(rows, ("input_ids_a",))
    loader = row_loader(rows, 8, shuffle=True, seed=3, group_by_length=True)
    alone = list(loader.sampler)
    one_process = [tuple(alone[i:i + 8]) for i in range(0, len(alone), 8)]

    monkeypatch.setattr(training, "distributed_replicas", lambda: 2)
    ranks = [list(DistributedSamplerWrapper(loader.sampler, num_replicas=2, rank=r, shuffle=False))
             for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == list(range(196))                    # 196 rows: no row twice, none left out
    per_rank = [[tuple(order[i:i + 8]) for i in range(0, len(order), 8)] for order in ranks]
    full = [batch for batches in per_rank for batch in batches if len(batch) == 8]
    assert len(full) == 24 and set(full) <= set(one_process)                  # the single process's batches
    assert per_rank[0][:3] == one_process[0:6:2] and per_rank[1][:3] == one_process[1:6:2]

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    assert padded([b for batches in per_rank for b in batches]) <= 1.1 * padded(one_process)
    # Without dealing, the strided split mixes neighbouring batches of different lengths.
    monkeypatch.setattr(training, "distributed_replicas", lambda: 1)
    mixed = [list(DistributedSamplerWrapper(loader.sampler, num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    mixed_batches = [tuple(order[i:i + 8]) for order in mixed for i in range(0, len(order), 8)]
    assert padded(mixed_batches) > 1.1 * padded(one_process)
