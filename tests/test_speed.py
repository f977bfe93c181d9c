"""Teacher vs student timing and FLOPs on real tokenized SST-2 rows."""

from nni_adabert.data import load_task, tokenize
from nni_adabert.space import AdaBertStudent, StudentConfig, random_arch
from nni_adabert.speed import measure_speedup, pad_to, teacher_flops, with_teacher_input
from nni_adabert.tasks import get_task
from nni_adabert.teacher import load_tokenizer


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
