"""The settings of a search and of a retraining, each defined once.

One dataclass field per setting carries its default, its range and its help. The
``nni-adabert`` options and the NNI trial options are generated from these fields
(:func:`add_options`, :func:`from_options`), and the Python API takes the objects
whole, as Hugging Face passes a config and DARTS passes ``args``:

- :class:`TrainingConfig`: what every student training shares (data, loss, the weights' optimizer);
- :class:`ArchitectureConfig`: how the architecture logits learn (:class:`nas.strategy.AdaBertStrategy`);
- :class:`SearchConfig`: both, plus the space and the efficiency loss (``nni-adabert search``);
- :class:`RetrainConfig`: a fixed child from fresh weights (``nni-adabert retrain``).

Defaults are the paper's (section 3.1) where it gives them.
"""

from __future__ import annotations

import argparse
import math
import sys
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from .errors import UserError
from .tables import format_table

# β, the weight of L_E. The paper's 4 belongs to its L_E scale. With ours (a mean over edges, in
# [0, 1]) β = 4 collapsed short searches to pooling/skip/zero cells, while β = 0.5 kept β = 0's
# dev accuracy with cells 5x smaller and searched structures that beat random ones
# (bench/results/beta-calibration/SST-2, adaptiveness/beta0.5*).
DEFAULT_BETA = 0.5

__all__ = ["DEFAULT_BETA", "TrainingConfig", "ArchitectureConfig", "SearchConfig", "RetrainConfig",
           "setting", "add_options", "from_options", "options_table"]


def setting(default: Any, help: str, *, minimum: float | None = None, maximum: float | None = None,
            below: float | None = None, positive: bool = False, choices: tuple | None = None,
            what: str | None = None, added: bool = False) -> Any:
    """A config field: its default, its range (``minimum``/``maximum`` inclusive, ``below``
    exclusive, ``positive``: > 0), ``choices``, and its help text; :class:`Settings` checks the
    range. ``what`` names the setting in messages, e.g. "gamma (the KD weight)". ``added``: a
    setting added after runs were recorded, named in a run's identity only when it is not its
    default (:meth:`Settings.identity`), so those runs are still found finished and resumed."""
    return field(default=default, metadata={"help": help, "minimum": minimum, "maximum": maximum, "below": below,
                                            "positive": positive, "choices": choices, "what": what,
                                            "added": added})


def _value_type(cls: type, name: str) -> tuple[type, bool]:
    """``(int, True)`` for a field annotated ``int | None``: the value type and whether None is allowed."""
    hint = typing.get_type_hints(cls)[name]
    args = typing.get_args(hint)
    if args:
        kinds = [a for a in args if a is not type(None)]
        return kinds[0], type(None) in args
    return hint, False


@dataclass
class Settings:
    """Base of the config dataclasses: checks every field against its :func:`setting`."""

    kind = "setting"  # how messages name the settings: "search setting epochs must be ..."

    def __post_init__(self) -> None:
        for f in fields(self):
            self._check(f, getattr(self, f.name))

    def _check(self, f, value) -> None:
        kind, optional = _value_type(type(self), f.name)
        meta = f.metadata
        where = f"{self.kind} setting {f.name}" + (f" ({meta['what']})" if meta.get("what") else "")
        if value is None and optional:
            return
        low, high, below = meta.get("minimum"), meta.get("maximum"), meta.get("below")
        if kind is bool:
            if not isinstance(value, bool):
                raise UserError(f"{where} must be true or false, got {value!r}")
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
                raise UserError(f"{where} must be an integer >= {low}, got {value!r}")
        elif kind is float:
            number = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            if high is not None or below is not None:
                if not number or value < low or (high is not None and value > high) or \
                        (below is not None and value >= below):
                    interval = f"[{low:g}, {high:g}]" if high is not None else f"[{low:g}, {below:g})"
                    raise UserError(f"{where} must be in {interval}, got {value!r}")
            elif not number or (meta.get("positive") and value <= 0) or (low is not None and value < low):
                bound = "> 0" if meta.get("positive") else f">= {low:g}"
                raise UserError(f"{where} must be a finite number {bound}, got {value!r}")
        if meta.get("choices") and value not in meta["choices"]:
            raise UserError(f"{where} must be one of {', '.join(map(repr, meta['choices']))}, got {value!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def identity(self) -> dict:
        """The settings that name a run (:func:`runs.identity`): all of them, but an ``added`` one
        at its default, which the runs recorded before it was added did not name."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if not (f.metadata.get("added") and getattr(self, f.name) == f.default)}


@dataclass
class TrainingConfig(Settings):
    """What every student training shares: data, loss, the weights' optimizer, the machine."""

    kind = "training"

    # 3 epochs: on the 4-copy SST-2 store 3 retraining epochs beat 5 (docs/results.md) and take an hour on 2 cores.
    epochs: int = setting(3, "training epochs", minimum=1)
    batch_size: int = setting(64, "examples per step", minimum=1)
    gamma: float = setting(0.8, "KD weight γ (L = (1-γ)·CE + γ·KD + β·L_E)", minimum=0, maximum=1,
                           what="the KD weight")
    temperature: float = setting(1.0, "KD temperature T", positive=True)
    probe_kd: bool = setting(True, "L_KD includes every teacher layer's probe, with attentive weights "
                                   "(the paper's method); off: --final-kd is needed")
    final_kd: bool = setting(False, "L_KD includes the teacher's last-layer logits against the student's final "
                                    "logits (with --no-probe-kd: the paper's Base-KD)")
    final_kd_mse: bool = setting(False, "the final-logit term is the squared distance of the raw logits "
                                        "(Tang et al. 2019) instead of the soft cross-entropy at --temperature",
                                 added=True)
    optimizer: str = setting("sgd", "the weights' optimizer: sgd (momentum 0.9) or adamw", choices=("sgd", "adamw"))
    lr: float = setting(2e-2, "learning rate of the weights, cosine-annealed per step to --min-lr", positive=True)
    min_lr: float | None = setting(5e-4, "final learning rate of the cosine schedule (none: lr / 100)", minimum=0)
    weight_decay: float = setting(0.0, "weight decay of the weights' matrices and kernels (not biases and norms)",
                                  minimum=0)
    # Plain SGD at 2e-2 diverged to NaN in a full-SST-2 warm-up without clipping (as in DARTS).
    grad_clip: float = setting(5.0, "max norm of the weight gradients (0: off)", minimum=0)
    dropout: float = setting(0.1, "the student's dropout (embedding, before probes and classifier)",
                             minimum=0, below=1)
    pooling: str = setting("mean", "how each cell's output is pooled over its tokens for its probe and the "
                                   "classifier: mean, or max (max over time, as in Kim's 2014 CNN)",
                           choices=("mean", "max"), added=True)
    seed: int = setting(0, "seed of the weights, the data order and the Gumbel noise", minimum=0)
    # Batches pad to their longest row: SST-2's plain-shuffle batches are 3.4x their real tokens, grouped 1.05x
    # (bench/results/group-by-length).
    group_by_length: bool = setting(True, "batches of rows of similar lengths, shuffled (transformers' "
                                          "group_by_length): less padding, the same rows per epoch "
                                          "(with --devices > 1: whole batches to each process); off: a plain shuffle")
    train_limit: int | None = setting(None, "use only the first N train rows of the store", minimum=1)
    augmented_limit: int | None = setting(None, "limit the kinds of rows apart: the first --train-limit original "
                                                "rows plus the first N augmented rows (0 = no augmentation)",
                                          minimum=0)
    devices: int = setting(1, "GPUs (CPU processes without one) for this run, with Lightning's DDP", minimum=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.probe_kd or self.final_kd):
            raise UserError(f"{self.kind} settings probe_kd and final_kd are both off: L_KD needs one of them "
                            "(final_kd alone is the paper's Base-KD)")
        if self.final_kd_mse and not self.final_kd:
            raise UserError(f"{self.kind} setting final_kd_mse is on but final_kd is off: it sets the form of the "
                            "final-logit term, which --final-kd switches on")

    @property
    def final_lr(self) -> float:
        """Where the cosine schedule ends: ``min_lr``, or ``lr / 100`` when it is not set."""
        return self.lr / 100 if self.min_lr is None else self.min_lr


@dataclass
class ArchitectureConfig(Settings):
    """How the architecture logits learn: Adam on one joint step with the weights, Gumbel
    straight-through samples at a temperature annealed per step (paper section 2.5.2)."""

    kind = "architecture"

    # Not the paper's 3e-4: in a 2-epoch search Adam moves a logit by about lr per step, and 3e-4
    # left the distributions nearly flat (docs/results.md); 3e-3 is what every measured search used.
    arc_lr: float = setting(3e-3, "Adam learning rate of the architecture", minimum=0)
    arc_weight_decay: float = setting(1e-3, "Adam weight decay of the architecture", minimum=0)
    tau_start: float = setting(1.0, "Gumbel temperature at the start, annealed linearly per step", positive=True)
    tau_end: float = setting(0.1, "Gumbel temperature at the end", positive=True)
    warmup_epochs: int = setting(1, "epochs that train the weights only, before the architecture moves", minimum=0)
    full: bool = setting(False, "run every candidate op and depth (full straight-through) instead of single-path")
    train_every_depth: bool = setting(False, "every step also trains the child of each depth (all cells run): "
                                             "single-path alone trains cell k only when a depth >= k is drawn, "
                                             "which favours shallow children")
    alternate: bool = setting(False, "alternate architecture and weight steps (NNI DARTS style) instead of one "
                                     "joint step")
    arch_holdout: float = setting(0.0, "share of the train examples (each with its augmented copies) held out "
                                       "for the architecture steps, DARTS' split: the weights train on the rest "
                                       "and the steps alternate (0: one joint step on the same batch)",
                                  minimum=0, below=1)
    max_params: int | None = setting(None, "parameter budget of the exported student: the search is pulled to it "
                                           "(|E[params]/budget - 1|, in place of β·L_E) and the exported child "
                                           "is the most probable one within it", minimum=1)
    budget_excludes_embedding: bool = setting(False, "--max-params counts the student without its embedding")
    min_speedup: float | None = setting(None, "speed budget of the exported student: at least this many times "
                                              "faster than --speedup-over, predicted from a per-op latency table "
                                              "measured once on this machine (cached); the search's penalty is a "
                                              "ceiling on time (max(0, E[time]/budget - 1)), the exported child "
                                              "is within --budget-tolerance of it",
                                  positive=True)
    speedup_over: str = setting("bert-base", "the reference of --min-speedup: the BERT-base architecture or the "
                                             "teacher's", choices=("bert-base", "teacher"))
    latency_threads: int = setting(1, "threads the latency table is measured with (those the student will "
                                      "run on)", minimum=1)
    latency_batch_size: int = setting(128, "batch size the latency table is measured at", minimum=1)
    budget_weight: float = setting(1.0, "weight of each budget's penalty (with --max-params or --min-speedup)",
                                   minimum=0)
    budget_tolerance: float = setting(0.15, "the exported child has at least (1 - tolerance) of --max-params, "
                                            "and of the time --min-speedup allows, when the space has such a "
                                            "child with weights in its cell (1: no floor)",
                                      minimum=0, maximum=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tau_start < self.tau_end:
            raise UserError(f"{self.kind} settings: tau_start ({self.tau_start}) must be >= tau_end ({self.tau_end})")

    @property
    def has_budget(self) -> bool:
        """A parameter or speed budget is set (:mod:`nas.budget`)."""
        return self.max_params is not None or self.min_speedup is not None


@dataclass
class SearchConfig(ArchitectureConfig, TrainingConfig):
    """``nni-adabert search``: the space, the objective with its efficiency term, both optimizers."""

    kind = "search"

    beta: float = setting(DEFAULT_BETA, "efficiency-loss weight β (the paper's L_E; unused with a budget)",
                          minimum=0)
    # The search reads a sample of the store: 40,000 rows an epoch take about 3 minutes on 2 cores, and
    # a search on 20,000 + 20,000 SST-2 rows found the structure of the best student (docs/results.md).
    train_limit: int | None = setting(20000, "use only the first N original train rows of the store (none: all)",
                                      minimum=1)
    augmented_limit: int | None = setting(20000, "and the first N augmented rows (0 = no augmentation, none: "
                                                 "all)", minimum=0)
    embed_dim: int = setting(128, "width of the factorized embedding and the cells", minimum=1)
    k_max: int = setting(8, "most cells a student may have", minimum=1)
    space: str = setting("auto", "how a text pair enters the cells: matching (each text alone, an align op, a "
                                 "matching head), paper (the first cell's two inputs) or auto (matching for pairs)",
                         choices=("auto", "paper", "matching"))
    finetune_epochs: int = setting(0, "epochs that train the derived child alone after the search "
                                      "(as nni-adabert retrain does, from its searched weights)", minimum=0)
    # A flat distribution's argmax is about a random child, and random MRPC children retrain to 74-85 F1.
    candidates: int = setting(8, "when the search ends undecided (top_prob_ratio below 1.2) or under "
                                 "--min-speedup: children drawn from its distributions (the export first) within "
                                 "the budgets, timed under --min-speedup (those slower than asked dropped), trained "
                                 "--candidate-epochs each on the train examples but a held-out fifth; the best on "
                                 "that fifth is exported (0 or 1: the export)", minimum=0)
    candidate_epochs: int = setting(1, "epochs of each candidate's training (with --candidates)", minimum=1)

    @property
    def architecture_moves(self) -> bool:
        """Whether the architecture is trained at all: the weights-only warm-up ends before the last epoch."""
        return self.warmup_epochs < self.epochs

    @property
    def efficiency_beta(self) -> float:
        """The weight of the paper's L_E in the loss: ``beta``, or 0 with a budget (``max_params``,
        ``min_speedup``), whose penalty takes its place (:mod:`nas.budget`)."""
        return 0.0 if self.has_budget else self.beta

    def finetune_config(self) -> "RetrainConfig":
        """The fine-tuning after the search: a retraining's optimizer, this search's data and loss."""
        # (Not the pooling: the fine-tuning trains the searched child, which pools as the search did.)
        shared = {f.name: getattr(self, f.name) for f in fields(TrainingConfig)
                  if f.name not in ("epochs", "optimizer", "lr", "min_lr", "pooling")}
        return RetrainConfig(**shared, epochs=self.finetune_epochs, precise_bn_batches=0)

    def candidate_config(self) -> "RetrainConfig":
        """The short training of each candidate child (``candidates``): a retraining's recipe for
        ``candidate_epochs``, on this search's rows, seed, batch size and dropout, with this search's
        loss (γ, T, probe KD, the final-logit term's form), so that an ablation of the loss reaches the
        children it scores; the final-logit term stays the retraining's (on), which trains the
        classifier with γ = 1."""
        shared = {name: getattr(self, name) for name in ("batch_size", "dropout", "seed", "group_by_length",
                                                          "train_limit", "augmented_limit", "devices", "gamma",
                                                          "temperature", "probe_kd", "final_kd_mse")}
        # BatchNorm's moving averages, as before PreciseBN (the candidates' ranking with it is not measured yet).
        return RetrainConfig(**shared, epochs=self.candidate_epochs, precise_bn_batches=0)


@dataclass
class RetrainConfig(TrainingConfig):
    """``nni-adabert retrain``: a fixed child with ``(1-γ)·L_CE + γ·L_KD`` (no L_E: it is constant)."""

    kind = "retrain"

    # A fixed child's embedding learns far faster with Adam than with the search's SGD.
    optimizer: str = setting("adamw", "the weights' optimizer: adamw or sgd (momentum 0.9)", choices=("sgd", "adamw"))
    lr: float = setting(1e-3, "learning rate of the weights, cosine-annealed per step to --min-lr", positive=True)
    min_lr: float | None = setting(None, "final learning rate of the cosine schedule (none: lr / 100)", minimum=0)
    # A searched student's pooling is part of what its search chose: kept unless asked otherwise.
    pooling: str | None = setting(None, "how each cell's output is pooled over its tokens for its probe and the "
                                        "classifier: mean or max (none: the architecture file's; mean for a random "
                                        "one)", choices=("mean", "max"), added=True)
    # The final-logit term added 0.34 points to a 3-epoch SST-2 retraining (86.12 vs 85.78, docs/results.md).
    final_kd: bool = setting(True, "L_KD includes the teacher's last-layer logits against the student's final "
                                   "logits (with --no-probe-kd: the paper's Base-KD)")
    # A plain shuffle: the full-SST-2 seed-0 child retrained to 88.07 against 86.93 grouped (BatchNorm's running
    # statistics average the last batches, each of one length when grouped), at half the speed
    # (bench/results/pipeline/SST-2-default-plain). The search keeps grouped batches.
    group_by_length: bool = setting(False, "batches of rows of similar lengths, shuffled (transformers' "
                                           "group_by_length): less padding, the same rows per epoch, 2x faster "
                                           "(with --devices > 1: whole batches to each process); off: a plain shuffle")
    # BatchNorm's moving average remembers the last few dozen steps: the >=100x SST-2 child after 6 grouped epochs
    # scored 86.24 with it and 88.07 with statistics over 200 plain batches (bench/results/retrain-recipes).
    precise_bn_batches: int = setting(200, "train batches (a plain shuffle) over which BatchNorm's statistics are "
                                           "re-estimated before each dev evaluation, weights unchanged (PreciseBN); "
                                           "0: BatchNorm's moving averages", minimum=0)


# --------------------------------------------------------------------------- options


def _option(config_cls: type[Settings], f) -> tuple[str, type, Any]:
    """``(flag, value type, default)`` of the field ``f``: ``--arc-lr`` for ``arc_lr``, and
    ``--no-<name>`` for a flag that is on by default."""
    kind, _ = _value_type(config_cls, f.name)
    default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
    prefix = "--no-" if kind is bool and default else "--"
    return prefix + f.name.replace("_", "-"), kind, default


def _shown(default: Any) -> str:
    return "none" if default is None else f"{default:g}" if isinstance(default, float) else str(default)


def _none_or(kind: type):
    """The argparse type of an optional setting: ``none`` gives ``None``, anything else ``kind``."""
    def parse(value):  # a string from the command line, or a tuner's value as it is
        return None if isinstance(value, str) and value.strip().lower() == "none" else kind(value)
    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, config_cls: type[Settings],
                only: tuple[str, ...] | None = None) -> None:
    """One option per field of ``config_cls`` (``arc_lr`` -> ``--arc-lr``), with its type, default
    and help; a flag is switched on by ``--<name>`` and off by ``--no-<name>``. ``only``: these fields."""
    for f in fields(config_cls):
        if only is not None and f.name not in only:
            continue
        flag, kind, default = _option(config_cls, f)
        help_text = f.metadata.get("help", "")
        if kind is bool:  # both --name and --no-name: a default may differ between commands (group_by_length)
            parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, action=argparse.BooleanOptionalAction,
                                default=default, help=f"{help_text} (default {'on' if default else 'off'})")
        else:
            optional = _value_type(config_cls, f.name)[1]
            # argparse checks choices after the type, so "none" (None) would be refused: Settings checks those.
            parser.add_argument(flag, dest=f.name, type=_none_or(kind) if optional else kind, default=default,
                                choices=None if optional else f.metadata.get("choices"),
                                help=f"{help_text} (default {_shown(default)})")


def from_options(config_cls: type[Settings], options: argparse.Namespace | dict, **overrides) -> Settings:
    """The ``config_cls`` of parsed options: every option named like one of its fields sets it,
    then ``overrides``. Options of other commands are ignored."""
    values = vars(options) if isinstance(options, argparse.Namespace) else dict(options)
    names = {f.name for f in fields(config_cls)}
    return config_cls(**{**{k: v for k, v in values.items() if k in names}, **overrides})


def options_table(config_cls: type[Settings]) -> str:
    """The options :func:`add_options` makes for ``config_cls``, as a Markdown table (the CLI
    reference in docs/cli.md is generated with it, so it cannot drift from the code)."""
    rows = []
    for f in fields(config_cls):
        flag, kind, default = _option(config_cls, f)
        shown = ("on" if default else "off") if kind is bool else _shown(default)
        rows.append([f"`{flag}`", shown, f.metadata.get("help", "").replace("|", "\\|")])
    return format_table(["option", "default", "meaning"], rows)


def _write_docs(path: str) -> None:
    """Rewrite the blocks between ``<!-- options:<command> -->`` and ``<!-- /options -->`` in ``path``."""
    text = open(path, encoding="utf-8").read()
    for command, config_cls in (("search", SearchConfig), ("retrain", RetrainConfig)):
        start, end = f"<!-- options:{command} -->\n", "<!-- /options -->"
        head, found, rest = text.partition(start)
        if not found:
            raise SystemExit(f"{path}: no {start.strip()} block")
        text = head + start + options_table(config_cls) + "\n" + end + rest.partition(end)[2]
    open(path, "w", encoding="utf-8").write(text)


if __name__ == "__main__":  # python -m nni_adabert.config docs/cli.md
    _write_docs(sys.argv[1])
