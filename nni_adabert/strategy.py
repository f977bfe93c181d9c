"""AdaBERT's search strategy: Gumbel straight-through, single-path, one sample per label.

Usage (NNI 3.0)::

    space = AdaBertSpace(config, embedding_init)
    evaluator = Lightning(AdaBertDistillModule(num_labels), Trainer(max_epochs=...),
                          train_dataloaders=train, val_dataloaders=dev)
    exp = NasExperiment(space, evaluator, AdaBertStrategy(seed=0))
    exp.run()
    arch = exp.export_top_models(formatter="dict")[0]   # {"edge_2_0": "std_conv_3", ..., "depth": 3}
    child = space.freeze(arch)                           # plain AdaBertStudent, trained weights

Like NNI's other one-shot strategies the strategy object is thin: it turns the space into
a supernet (mutation hooks replace each edge ``LayerChoice`` and the ``DepthChoice`` by
the straight-through modules below) and wraps the evaluator's module in
:class:`AdaBertLightningModule`, which holds the search loop.

Each training step (paper section 2.5.2):

1. **resample**: for every label (9 edges + depth) draw ONE Gumbel-softmax sample
   ``y = softmax((alpha + g) / tau)`` from a seedable generator; every cell's module with
   that label gets the same draw. The forward uses the hard one-hot, the backward the
   relaxed ``y`` via ``gate = hard + (y - y.detach())``: a gate whose value is exactly
   1.0 or 0.0 and whose gradient is that of ``y``.
2. **single-path forward** (default): each edge runs only its sampled op,
   ``gate_sampled * op(x)``; only the first ``K_sampled`` cells run; the classifier sees
   ``gate_K * pooled(c_K)`` and the KD term of depth K is multiplied by ``gate_K``. So
   the forward equals the frozen child's exactly, and CE, KD and the efficiency loss
   (computed on the relaxed ``y``'s) all send gradient to op and depth parameters.
   ``full=True`` runs every candidate and every cell (``sum_o gate_o op_o(x)``,
   ``sum_k gate_k ...``): same values, denser gradients, ~10x the compute.
3. **one joint update** (default): a single backward, then the weight optimizer (the
   evaluator's SGD + cosine) and the architecture optimizer (Adam) both step. The paper
   trains weights and architecture "simultaneously"; this costs one forward/backward per
   step instead of DARTS' two and keeps the dev set out of the search.
   ``alternate=True`` does NNI-DARTS-style alternation instead (architecture step, then
   a freshly sampled weight step, both on the training batch).

The temperature is annealed linearly per step from ``tau[0]`` to ``tau[1]`` over the
run. Validation runs the current argmax architecture (all gates constant), so dev metrics
are those of the child that would be exported; the argmax architecture, its params and
FLOPs and the expected params under the current distributions are logged each epoch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
from nni.mutable import Categorical, Sample
from nni.nas.evaluator.pytorch import LightningModule
from nni.nas.nn.pytorch import LayerChoice, ModelSpace
from nni.nas.oneshot.pytorch.base_lightning import BaseOneShotLightningModule
from nni.nas.oneshot.pytorch.strategy import OneShotStrategy, no_default_hook
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule

from . import cost as _cost
from .space import DEPTH_LABEL, DepthChoice
from .training import epoch_seed

__all__ = [
    "AdaBertStrategy", "AdaBertLightningModule", "GumbelDraw", "gumbel_straight_through",
    "StraightThroughLayerChoice", "StraightThroughDepthChoice",
]

_logger = logging.getLogger(__name__)


@dataclass
class GumbelDraw:
    """One straight-through sample of a choice with ``n`` candidates.

    Attributes:
        index: the chosen candidate (argmax of the relaxed sample, or forced).
        gates: ``[n]``: value = one-hot of ``index``; gradient = that of ``relaxed``.
        relaxed: ``[n]`` Gumbel-softmax sample ``y`` (``None`` for a deterministic argmax draw).
    """

    index: int
    gates: torch.Tensor
    relaxed: Optional[torch.Tensor]


def gumbel_straight_through(logits: torch.Tensor, tau: float, generator: Optional[torch.Generator] = None,
                            force_index: Optional[int] = None) -> GumbelDraw:
    """Draw ``y = softmax((logits + g) / tau)``, ``g ~ Gumbel(0, 1)``; gates ``hard + y - y.detach()``.

    Args:
        logits: ``[n]`` architecture logits (log theta, up to a constant).
        tau: temperature.
        generator: CPU generator for the noise (seedable, independent of the global RNG).
        force_index: use this candidate as the hard sample instead of ``argmax y``
            (still a valid straight-through estimator; used by tests and benchmarks).
    """
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float32)
    g = -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7))).to(device=logits.device, dtype=logits.dtype)
    y = torch.softmax((logits + g) / tau, dim=-1)
    index = int(torch.argmax(y.detach()).item()) if force_index is None else int(force_index)
    hard = torch.zeros_like(y)
    hard[index] = 1.0
    # Value: exactly `hard` (y - y == 0 for finite y). Gradient: that of y.
    return GumbelDraw(index, hard + (y - y.detach()), y)


def _argmax_draw(logits: torch.Tensor, index: Optional[int] = None) -> GumbelDraw:
    index = int(torch.argmax(logits.detach()).item()) if index is None else index
    hard = torch.zeros(logits.shape, device=logits.device, dtype=logits.dtype)
    hard[index] = 1.0
    return GumbelDraw(index, hard, None)


class _StraightThroughBase(BaseSuperNetModule):
    """Shared bits: the architecture logits, the current draw and NNI's export protocol."""

    _arch_alpha: nn.Parameter
    draw: Optional[GumbelDraw]
    full: bool

    @property
    def values(self) -> list:
        raise NotImplementedError

    def current_draw(self) -> GumbelDraw:
        # Never resampled (e.g. the mutated space used directly): behave as the argmax child.
        return self.draw if self.draw is not None else _argmax_draw(self._arch_alpha)

    def relaxed_weights(self) -> Optional[torch.Tensor]:
        """The relaxed sample of the current draw (``None`` under an argmax draw)."""
        return None if self.draw is None else self.draw.relaxed

    def resample(self, memo: Dict[str, Any]) -> Dict[str, Any]:
        # Sampling is done centrally by AdaBertLightningModule.resample (one draw per label).
        return {} if self.label in memo or self.draw is None else {str(self.label): self.values[self.draw.index]}

    def export(self, memo: Dict[str, Any]) -> Dict[str, Any]:
        if self.label in memo:
            return {}
        # str(): NNI labels are a str subclass, which pickles badly into checkpoints.
        return {str(self.label): self.values[int(torch.argmax(self._arch_alpha).item())]}

    def export_probs(self, memo: Dict[str, Any]) -> Dict[str, Any]:
        if self.label in memo:
            return {}
        return {str(self.label): dict(zip(self.values, torch.softmax(self._arch_alpha.detach(), -1).cpu().tolist()))}

    def arch_parameters(self):
        yield self._arch_alpha


class StraightThroughLayerChoice(LayerChoice, _StraightThroughBase):
    """An edge of the supernet. ``forward(x [B,D,L], mask [B,1,L]) -> [B,D,L]``.

    Single-path: ``gate[i] * op_i(x)`` for the sampled ``i`` only. Full: ``sum_o gate_o op_o(x)``.
    ``_arch_alpha`` is the same ``nn.Parameter`` object in every cell (one alpha per label).
    """

    def __init__(self, candidates: Dict[str, nn.Module], alpha: nn.Parameter, label: str, full: bool = False):
        super().__init__(candidates, label=label)
        if len(alpha) != len(self.names):
            raise ValueError(f"alpha of {label!r} has {len(alpha)} entries for {len(self.names)} candidates")
        self._arch_alpha = alpha
        self.full = full
        self.draw = None

    @classmethod
    def mutate(cls, module: nn.Module, name: str, memo: Dict[str, Any], mutate_kwargs: Dict[str, Any]):
        if type(module) is LayerChoice:
            return cls(module.candidates, memo[module.label], module.label, mutate_kwargs.get("full", False))
        return None

    @property
    def values(self) -> list:
        return list(self.names)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        draw = self.current_draw()
        if self.full:
            out = None
            for i, name in enumerate(self.names):
                term = draw.gates[i] * self[name](x, mask)
                out = term if out is None else out + term
            return out  # type: ignore[return-value]
        return draw.gates[draw.index] * self[self.names[draw.index]](x, mask)


class StraightThroughDepthChoice(DepthChoice, _StraightThroughBase):
    """The depth of the supernet (see :class:`space.DepthChoice` for the protocol).

    Single-path: ``cells_needed = K`` so only cells 1..K run; returns ``gate_K * pooled_K``
    and KD term ``[(K, gate_K)]``. Full: all cells run; ``sum_k gate_k pooled_k`` and one
    KD term per depth.
    """

    def __init__(self, k_max: int, label: str, alpha: nn.Parameter, full: bool = False):
        super().__init__(k_max, label)
        self._arch_alpha = alpha
        self.full = full
        self.draw = None

    @classmethod
    def mutate(cls, module: nn.Module, name: str, memo: Dict[str, Any], mutate_kwargs: Dict[str, Any]):
        if type(module) is DepthChoice:
            return cls(module.k_max, module.label, memo[module.label], mutate_kwargs.get("full", False))
        return None

    @property
    def values(self) -> list:
        return list(range(1, self.k_max + 1))

    @property
    def cells_needed(self) -> Optional[int]:
        return None if self.full else self.current_draw().index + 1

    def forward(self, candidates: List[torch.Tensor]) -> torch.Tensor:
        draw = self.current_draw()
        if self.full:
            out = None
            for k, c in enumerate(candidates):
                term = draw.gates[k] * c
                out = term if out is None else out + term
            return out  # type: ignore[return-value]
        return draw.gates[draw.index] * candidates[draw.index]

    def depth_terms(self, n_run: int) -> List[Tuple[int, Optional[torch.Tensor]]]:
        draw = self.current_draw()
        if self.full:
            return [(k, draw.gates[k - 1]) for k in range(1, n_run + 1)]
        return [(draw.index + 1, draw.gates[draw.index])]


_ST_TYPES = (StraightThroughLayerChoice, StraightThroughDepthChoice)


class AdaBertLightningModule(BaseOneShotLightningModule):
    """The search loop (see the module docstring). Wraps the evaluator's LightningModule.

    Args:
        training_module: the evaluator's module (e.g. :class:`distill.AdaBertDistillModule`).
        tau: ``(initial, final)`` Gumbel temperature, annealed linearly per step; a float keeps it fixed.
        arc_learning_rate, arc_weight_decay, arc_betas: Adam for the architecture logits.
        alternate: DARTS-style alternating steps instead of one joint step.
        warmup_epochs: epochs during which the architecture logits are not updated.
        gradient_clip_val: clip weight gradients (passed to the evaluator's clipping).
        seed: seed of the Gumbel noise generator (``None``: drawn from the global RNG,
            so ``pytorch_lightning.seed_everything`` still makes runs reproducible).
        log_every_n_steps: how often the choice probabilities are logged.
    """

    def __init__(self, training_module: LightningModule, *, tau: Union[float, Tuple[float, float]] = (1.0, 0.1),
                 arc_learning_rate: float = 3e-4, arc_weight_decay: float = 1e-3,
                 arc_betas: Tuple[float, float] = (0.9, 0.999), alternate: bool = False, warmup_epochs: int = 0,
                 gradient_clip_val: Optional[float] = None, seed: Optional[int] = None, log_every_n_steps: int = 10):
        super().__init__(training_module)
        self.tau_init, self.tau_final = (float(tau), float(tau)) if isinstance(tau, (int, float)) else map(float, tau)
        if not self.tau_init >= self.tau_final > 0:
            raise ValueError(f"temperature must satisfy initial >= final > 0, got {tau}")
        self.tau = self.tau_init
        self.arc_learning_rate = arc_learning_rate
        self.arc_weight_decay = arc_weight_decay
        self.arc_betas = tuple(arc_betas)
        self.alternate = alternate
        self.warmup_epochs = warmup_epochs
        self.gradient_clip_val = gradient_clip_val
        self.log_every_n_steps = max(int(log_every_n_steps), 1)
        self.seed = int(torch.randint(0, 2**31, ()).item()) if seed is None else int(seed)
        self.generator = torch.Generator()
        self.generator.manual_seed(self.seed)
        self.history: List[Dict[str, Any]] = []
        self.last_sample: Sample = {}

    # ------------------------------------------------------------------ sampling

    def straight_through_modules(self) -> List[_StraightThroughBase]:
        return [m for m in self.supernet_modules() if isinstance(m, _ST_TYPES)]

    def resample(self, force: Optional[Mapping[str, Any]] = None) -> Sample:
        """Draw one Gumbel straight-through sample per label and give it to every module with that label.

        Args:
            force: optional ``{label: value}`` hard choices to use instead of the argmax of
                the relaxed sample (the relaxed ``y`` still carries the gradient).

        Returns:
            The sampled architecture dict (same format as :meth:`export`).
        """
        draws: Dict[str, GumbelDraw] = {}
        sample: Dict[str, Any] = {}
        for module in self.straight_through_modules():
            label = str(module.label)
            if label not in draws:
                forced = None
                if force is not None and label in force:
                    forced = module.values.index(force[label])
                draws[label] = gumbel_straight_through(module._arch_alpha, self.tau, self.generator, forced)
                sample[label] = module.values[draws[label].index]
            module.draw = draws[label]
        self.last_sample = sample
        return sample

    def use_argmax(self) -> Sample:
        """Set every module to the argmax choice (constant gates). Returns that architecture."""
        draws: Dict[str, GumbelDraw] = {}
        for module in self.straight_through_modules():
            label = str(module.label)
            if label not in draws:
                draws[label] = _argmax_draw(module._arch_alpha.detach())
            module.draw = draws[label]
        return self.export()

    def arch_parameters(self) -> List[nn.Parameter]:
        params: Dict[int, nn.Parameter] = {}
        for m in self.straight_through_modules():
            params[id(m._arch_alpha)] = m._arch_alpha
        return list(params.values())

    def _temperature(self, batch_idx: int) -> float:
        trainer = self.trainer
        progress = 0.0
        n_batches = trainer.num_training_batches
        if trainer.max_epochs and trainer.max_epochs > 0 and n_batches and n_batches != float("inf"):
            progress = (trainer.current_epoch + batch_idx / n_batches) / trainer.max_epochs
        elif trainer.max_steps and trainer.max_steps > 0 and n_batches and n_batches != float("inf"):
            progress = (trainer.current_epoch * n_batches + batch_idx) / trainer.max_steps
        progress = min(max(progress, 0.0), 1.0)
        return self.tau_init + (self.tau_final - self.tau_init) * progress

    # ------------------------------------------------------------------ optimization

    def configure_architecture_optimizers(self):
        params = self.arch_parameters()
        if not params:
            raise ValueError("no architecture parameters found: was the space mutated by AdaBertStrategy?")
        return torch.optim.Adam(params, lr=self.arc_learning_rate, betas=self.arc_betas,
                                weight_decay=self.arc_weight_decay)

    def postprocess_weight_optimizers(self, optimizers: Any) -> Any:
        blacklist = {id(p) for p in self.arch_parameters()}

        def strip(opt: Any) -> Any:
            if isinstance(opt, torch.optim.Optimizer):
                for group in opt.param_groups:
                    group["params"] = [p for p in group["params"] if id(p) not in blacklist]
                return opt
            if isinstance(opt, (list, tuple)):
                return type(opt)(strip(o) for o in opt)
            if isinstance(opt, dict):
                return {k: strip(v) for k, v in opt.items()}
            return opt

        return strip(optimizers)

    def _step_loss(self, batch: Any, batch_idx: int) -> Tuple[torch.Tensor, Any]:
        out = self.training_module.training_step(batch, batch_idx)
        return (out["loss"] if isinstance(out, dict) else out), out

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self.tau = self._temperature(batch_idx)
        arc_optim = self.architecture_optimizers()
        arch_on = self.trainer.current_epoch >= self.warmup_epochs

        if self.alternate and arch_on:
            self.resample()
            arc_optim.zero_grad()
            loss, _ = self._step_loss(batch, 2 * batch_idx)
            self.manual_backward(loss)
            arc_optim.step()

        self.resample()
        arc_optim.zero_grad()
        loss, out = self._step_loss(batch, 2 * batch_idx + 1 if self.alternate else batch_idx)
        # zero weight grads -> backward (reaches weights AND architecture logits) -> weight step
        self.advance_optimization(loss, batch_idx, self.gradient_clip_val)
        if arch_on and not self.alternate:
            arc_optim.step()
        self.advance_lr_schedulers(batch_idx)

        self.log("gumbel_tau", self.tau)
        if batch_idx % self.log_every_n_steps == 0:
            self.log_probs(self.export_probs())
        return out

    # ------------------------------------------------------------------ validation: the argmax child

    def on_validation_epoch_start(self) -> None:
        self.use_argmax()
        hook = getattr(self.training_module, "on_validation_epoch_start", None)
        if hook is not None:
            hook()

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        return self.training_module.validation_step(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        self.training_module.on_validation_epoch_end()
        arch = self.export()
        stats = self.arch_stats(arch)
        self.log_dict({f"arch/{k}": float(v) for k, v in stats.items()})
        if self.trainer.sanity_checking:
            return
        metrics = dict(getattr(self.training_module, "last_val_metrics", {}) or {})
        entry = {"epoch": int(self.trainer.current_epoch), "arch": arch, **stats, **metrics}
        self.history.append(entry)
        _logger.info("epoch %d: %s", entry["epoch"], entry)
        experiment = getattr(self.logger, "experiment", None) if self.logger is not None else None
        if experiment is not None and hasattr(experiment, "add_text"):
            experiment.add_text("arch", str(arch), global_step=int(self.trainer.current_epoch))

    def arch_stats(self, arch: Optional[Mapping[str, Any]] = None) -> Dict[str, float]:
        """Depth, params and FLOPs of ``arch`` (default: argmax) and expected params under the current distributions."""
        arch = self.export() if arch is None else arch
        config = getattr(self.model, "config", None)
        if config is None:
            return {"depth": float(arch.get(DEPTH_LABEL, 0))}
        probs = self.export_probs()
        op_probs = torch.tensor([[probs[label][op] for op in config.op_names] for label in config.edge_labels])
        depth_probs = torch.tensor([probs[DEPTH_LABEL][k] for k in range(1, config.k_max + 1)])
        return {
            "depth": float(arch[DEPTH_LABEL]),
            "params": float(_cost.child_params(config, arch)),
            "params_without_embedding": float(_cost.child_params(config, arch, include_embedding=False)),
            "flops": float(_cost.child_flops(config, arch, config.max_positions)),
            "expected_params": _cost.expected_child_params(config, op_probs, depth_probs),
        }

    # ------------------------------------------------------------------ checkpoints

    def on_train_epoch_start(self) -> None:
        # The epoch's noise depends on (seed, epoch) only: a resumed run draws what an uninterrupted one would.
        self.generator.manual_seed(epoch_seed(self.seed, self.trainer.current_epoch))
        super().on_train_epoch_start()

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        # The architecture logits are parameters of the model (in state_dict); the Adam state
        # is saved by Lightning. The Gumbel noise needs only the seed: every epoch reseeds from it
        # (a drawn seed, with seed=None, must survive the resume).
        checkpoint["adabert"] = {"seed": self.seed, "history": self.history}

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        state = checkpoint.get("adabert")
        if state:
            self.seed = int(state.get("seed", self.seed))
            self.history = list(state.get("history", []))


class AdaBertStrategy(OneShotStrategy):
    """AdaBERT's one-shot strategy: Gumbel straight-through, single-path, joint updates.

    Args:
        tau: Gumbel temperature ``(initial, final)``, annealed linearly per step (paper: anneal to ~0).
        full: run every candidate op and every depth (full straight-through) instead of single-path.
        arc_learning_rate, arc_weight_decay, arc_betas: Adam for the architecture logits
            (paper: lr 3e-4, weight decay 1e-3).
        alternate: alternate architecture / weight steps like NNI's DARTS instead of one joint step.
        warmup_epochs: train weights only for this many epochs first.
        gradient_clip_val: weight gradient clipping.
        seed: seed of the Gumbel noise.
        log_every_n_steps: how often choice probabilities are logged.

    The weight optimizer and learning-rate schedule are the evaluator's (see
    :class:`distill.AdaBertDistillModule`: SGD momentum 0.9, cosine 2e-2 -> 5e-4).
    Architecture logits start at zero (uniform distributions).
    """

    def __init__(self, *, tau: Union[float, Tuple[float, float]] = (1.0, 0.1), full: bool = False,
                 arc_learning_rate: float = 3e-4, arc_weight_decay: float = 1e-3,
                 arc_betas: Tuple[float, float] = (0.9, 0.999), alternate: bool = False, warmup_epochs: int = 0,
                 gradient_clip_val: Optional[float] = None, seed: Optional[int] = None,
                 log_every_n_steps: int = 10, **kwargs: Any):
        super().__init__(**kwargs)
        self.tau = tau
        self.full = full
        self.arc_learning_rate = arc_learning_rate
        self.arc_weight_decay = arc_weight_decay
        self.arc_betas = arc_betas
        self.alternate = alternate
        self.warmup_epochs = warmup_epochs
        self.gradient_clip_val = gradient_clip_val
        self.seed = seed
        self.log_every_n_steps = log_every_n_steps
        self._arch_parameters: Dict[str, nn.Parameter] = {}

    def default_mutation_hooks(self) -> list:
        return [StraightThroughLayerChoice.mutate, StraightThroughDepthChoice.mutate, no_default_hook]

    def mutate_model(self, model: ModelSpace) -> ModelSpace:
        if not isinstance(model, ModelSpace):
            raise TypeError("AdaBertStrategy searches a ModelSpace (e.g. AdaBertSpace)")
        # One logit vector per label, shared by every module with that label (all cells).
        self._arch_parameters = {}
        for label, mutable in model.simplify().items():
            if not isinstance(mutable, Categorical):
                raise TypeError(f"AdaBertStrategy supports categorical choices only; "
                                f"{label!r} is {type(mutable).__name__}")
            self._arch_parameters[label] = nn.Parameter(torch.zeros(len(mutable.values)))
        return super().mutate_model(model)

    def run_hook(self, hook, name: str, module: nn.Module, memo: Dict[str, Any]):
        if not memo.get("_validated"):
            memo.update(self._arch_parameters)
            memo["_validated"] = True
        return hook(module, name, memo, {"full": self.full})

    def configure_oneshot_module(self, training_module: LightningModule) -> AdaBertLightningModule:
        return AdaBertLightningModule(
            training_module, tau=self.tau, arc_learning_rate=self.arc_learning_rate,
            arc_weight_decay=self.arc_weight_decay, arc_betas=self.arc_betas, alternate=self.alternate,
            warmup_epochs=self.warmup_epochs, gradient_clip_val=self.gradient_clip_val, seed=self.seed,
            log_every_n_steps=self.log_every_n_steps,
        )
