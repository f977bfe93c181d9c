"""Teacher vs student timing and FLOPs on real tokenized SST-2 rows."""

import pytest

from nni_adabert.data.glue import load_task
from nni_adabert.data.encoding import tokenize
from nni_adabert.model.space import AdaBertStudent, StudentConfig, random_arch
from nni_adabert.workflows.speed import measure_speedup, pad_to, teacher_flops, with_teacher_input
from nni_adabert.data.tasks import get_task
from nni_adabert.teacher.finetune import load_tokenizer


def test_teacher_input_rebuilt_from_student_ids(glue_dir, minilm_dir):
    spec = get_task("MRPC")
    rows = tokenize(load_task(spec, glue_dir)["dev"].select(range(4)), load_tokenizer(minilm_dir), spec)
    for row in rows:
        rebuilt = with_teacher_input({"input_ids_a": row["input_ids_a"], "input_ids_b": row["input_ids_b"]})
        assert rebuilt["input_ids"] == row["input_ids"] and rebuilt["token_type_ids"] == row["token_type_ids"]


def test_measure_speedup_and_flops(glue_dir, minilm_dir):
    from transformers import AutoModelForSequenceClassification

    spec = get_task("SST-2")
    rows = list(tokenize(load_task(spec, glue_dir)["dev"].select(range(16)), load_tokenizer(minilm_dir), spec))
    teacher = AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=2)
    config = StudentConfig(vocab_size=30522, num_labels=2, k_max=2)
    student = AdaBertStudent(config, random_arch(config, seed=0))
    speed = measure_speedup(teacher, student, rows, batch_size=8, repeats=1)
    assert speed["examples"] == 16 and speed["teacher_seconds"] > 0 and speed["student_seconds"] > 0
    assert speed["speedup"] == speed["teacher_seconds"] / speed["student_seconds"]
    # MiniLM-L6: 6 layers of 384-d attention + 1536-d FFN, about 2 * 11M multiply-adds per token.
    flops = teacher_flops(teacher, pad_to(rows[0], 128))
    assert 2.5e9 < flops < 3.5e9


def test_time_runs_is_round_robin():
    from nni_adabert.workflows.speed import time_runs

    calls = []
    times = time_runs({"a": (calls.append, ["a"]), "b": (calls.append, ["b"])}, repeats=2, warmup=1)
    assert calls == ["a", "b", "a", "b", "a", "b"]  # warm-up pass, then the timed passes interleaved
    assert {k: len(v) for k, v in times.items()} == {"a": 2, "b": 2}


def test_compression_against_teacher_and_bert_base(runs, tmp_path, one_thread):
    """What bench/compression.py reports, with a tiny BertConfig standing in for BERT-base."""
    import json

    from transformers import BertConfig

    from nni_adabert.workflows.export import write_student
    from nni_adabert.teacher.run import open_teacher_run
    from nni_adabert.workflows.evaluate import evaluate_student
    from nni_adabert.workflows.student import fresh_student, student_config, student_info
    from nni_adabert.workflows.speed import bert_base, transformer_params
    from nni_adabert.workflows.evaluate import compare_with_teacher

    store = open_teacher_run(runs / "SST-2")
    config = student_config(store)
    student = fresh_student(random_arch(config, seed=0), store, config)
    write_student(tmp_path, student, {**student_info(store), **evaluate_student(student, store)})
    tiny = bert_base(2, BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))
    # word 30522*32 + position 512*32 + token type 2*32 + LayerNorm 2*32; per layer QKVO 4*(32*32+32)
    # + LayerNorm 64 + FFN (32*64+64) + (64*32+32) + LayerNorm 64; pooler 32*32+32; classifier 32*2+2.
    embedding, per_layer = 30522 * 32 + 512 * 32 + 64 + 64, 4 * (32 * 32 + 32) + 64 + 2112 + 2080 + 64
    assert transformer_params(tiny, include_embedding=False) == 2 * per_layer + 1056 + 66
    assert transformer_params(tiny) == embedding + 2 * per_layer + 1056 + 66
    assert transformer_params(tiny) == sum(p.numel() for p in tiny.parameters())

    result = json.loads(json.dumps(compare_with_teacher(
        store, tmp_path, references={"BERT-base": tiny}, rows=16, batch_size=8, repeats=1, warmup=0, threads=1)))
    teacher, student_result, ref = result["teacher"], result["student"], result["references"]["BERT-base"]
    # MiniLM-L6 with a 2-label head: 22.7M params, 11.9M of them in the embeddings.
    assert (teacher["params"], teacher["params_without_embedding"]) == (22_713_986, 10_795_394)
    assert (teacher["layers"], teacher["hidden"], ref["layers"], ref["hidden"]) == (6, 384, 2, 32)
    assert ref["params"] == transformer_params(tiny) and ref["params_without_embedding"] == 2 * per_layer + 1122
    # FLOPs at 128 tokens, attention matmuls included: per layer 2*128*(4*32*32 + 2*32*64) for the
    # projections and FFN plus 2 * 2*128*128*32 for QK^T and AV; then the pooler and the classifier.
    per_layer_flops = 2 * 128 * (4 * 32 * 32 + 2 * 32 * 64) + 2 * 2 * 128 * 128 * 32
    assert ref["flops"] == 2 * per_layer_flops + 2 * 32 * 32 + 2 * 32 * 2
    assert student_result["params"] == evaluate_student(student, store)["params"]
    speed = result["speed"]
    assert speed["examples"] == 16 and speed["batch_size"] == 8 and speed["threads"] == 1
    assert set(speed["seconds"]) == {"teacher", "student", "BERT-base"} and min(speed["seconds"].values()) > 0
    assert student_result["speedup"] == speed["teacher_seconds"] / speed["student_seconds"] > 0
    assert student_result["speedup_over"]["BERT-base"] == ref["seconds"] / student_result["seconds"] > 0
    assert teacher["speedup_over"]["student"] == pytest.approx(1 / student_result["speedup"])
    for entry in (teacher, student_result, ref):
        assert {"params", "params_without_embedding", "flops", "seconds", "speedup_over"} <= set(entry)
