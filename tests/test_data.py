"""Tasks and data: the real GLUE files, the bundled sample, tokenization, bad input."""

import logging

import pytest
from conftest import write_tsv

from nni_adabert.data.glue import BUNDLED_DIR, load_task, read_glue_tsv
from nni_adabert.data.encoding import pad_batch, tokenize
from nni_adabert.errors import UserError
from nni_adabert.data.tasks import TASKS, get_task
from nni_adabert.teacher.finetune import load_tokenizer


def test_real_files_row_counts(glue_dir):
    sst2 = load_task("SST-2", glue_dir)
    assert (len(sst2["train"]), len(sst2["dev"])) == (67_349, 872)
    mrpc = load_task("mrpc", glue_dir / "MRPC")  # the task folder itself works too
    assert (len(mrpc["train"]), len(mrpc["dev"])) == (3_668, 408)
    # Quotes inside sentences are text, not CSV quoting.
    assert mrpc["train"][0]["text_a"].startswith('Amrozi accused his brother , whom he called " the witness "')
    assert sorted(set(sst2["dev"]["label"])) == [0, 1]


def test_bundled_sample_is_real_sst2(glue_dir):
    bundled, real = load_task("SST-2"), load_task("SST-2", glue_dir)
    assert (len(bundled["train"]), len(bundled["dev"])) == (8_000, 872)
    assert bundled["dev"]["text_a"] == real["dev"]["text_a"]
    assert set(bundled["train"]["text_a"]) <= set(real["train"]["text_a"])
    assert (BUNDLED_DIR / "SST-2" / "SOURCE.md").is_file()


def test_task_registry():
    assert set(TASKS) == {"SST-2", "MRPC", "QQP", "MNLI", "QNLI", "RTE"}
    assert get_task("sst2") is get_task("SST-2") is get_task("sst_2")
    assert get_task("MNLI").num_labels == 3 and get_task("MNLI").tsv_dev_file == "dev_matched.tsv"
    assert get_task("MRPC").metrics == ("f1", "accuracy") and get_task("QQP").is_pair
    assert not get_task("SST-2").is_pair
    with pytest.raises(UserError, match="unknown task 'COLA'.*SST-2, MRPC"):
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
