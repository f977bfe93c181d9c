"""AdaBERT's search strategy: Gumbel straight-through, single-path, one sample per label.

Usage (NNI 3.0)::

    space = AdaBertSpace(config, embedding_init)
    evaluator = Lightning(AdaBertDistillModule(num_labels), Trainer(max_epochs=...),
                          train_dataloaders=train, val_dataloaders=dev)
    exp = NasExperiment(space, evaluator, AdaBertStrategy(ArchitectureConfig(arc_lr=3e-4), seed=0))
    exp.run()
    arch = exp.export_top_models(formatter="dict")[0]   # {"edge_2_0": "std_conv_3", ..., "depth": 3}
    child = space.freeze(arch)                           # plain AdaBertStudent, trained weights

Like NNI's other one-shot strategies the strategy object is thin: it turns the space into
a supernet (mutation hooks replace each edge ``LayerChoice`` and the ``DepthChoice`` by
the straight-through modules of :mod:`supermodules`) and wraps the evaluator's module in
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
   ``train_every_depth=True`` keeps single-path ops but runs every cell, gives the depth
   its full relaxed gradient (``sum_k gate_k ...``) and adds every depth's child loss with
   constant weights, so cell k learns on every step, not only when a depth >= k is drawn.
3. **one joint update** (default): a single backward, then the weight optimizer (the
   evaluator's SGD + cosine) and the architecture optimizer (Adam) both step. The paper
   trains weights and architecture "simultaneously"; this costs one forward/backward per
   step instead of DARTS' two and keeps the dev set out of the search.
   ``alternate=True`` does NNI-DARTS-style alternation instead (architecture step, then
   a freshly sampled weight step, both on the training batch). Train batches that are dicts
   ``{"weights": ..., "arch": ...}`` (``train_dataloaders`` of two loaders, e.g. a split of the
   train set: ``arch_holdout``) alternate too, the architecture stepping on ``"arch"``, as
   DARTS does with its validation half.

The temperature is annealed linearly per step from ``tau_start`` to ``tau_end`` over the
run. Validation runs the child that would be exported (all gates constant: the argmax, unless
its cell does not read its inputs or budgets are set, :meth:`AdaBertLightningModule.export`), so
dev metrics are those of the exported child; that architecture, its params and
FLOPs and the expected params under the current distributions are logged each epoch.
"""

from __future__ import annotations

import logging
from dataclasses import fields, replace
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
from nni.mutable import Categorical, Sample
from nni.nas.evaluator.pytorch import LightningModule
from nni.nas.nn.pytorch import ModelSpace
from nni.nas.oneshot.pytorch.base_lightning import BaseOneShotLightningModule
from nni.nas.oneshot.pytorch.strategy import OneShotStrategy, no_default_hook

from ..config import ArchitectureConfig
from ..model import cost
from ..model.depth import DEPTH_LABEL
from ..model.latency import LatencyTable
from ..model.space import reads_inputs
from ..training import epoch_seed
from . import budget
from .supermodules import (STRAIGHT_THROUGH_TYPES, GumbelDraw, StraightThroughBase, StraightThroughDepthChoice,
                           StraightThroughLayerChoice, argmax_draw, gumbel_straight_through)

__all__ = ["AdaBertStrategy", "AdaBertLightningModule", "top_prob_ratio"]

_logger = logging.getLogger(__name__)


def top_prob_ratio(probs: Mapping[str, Mapping[Any, float]]) -> float:
    """How far the search has decided: the mean, over the choices (edges and depth), of the most
    probable candidate's probability times the number of candidates. 1.0 for uniform
    distributions (a random draw from the space), the number of candidates when every choice is
    one-hot. ``probs``: ``{label: {candidate: probability}}`` (:meth:`export_probs`)."""
    ratios = [max(p.values()) * len(p) for p in probs.values()]
    return sum(ratios) / len(ratios)


class AdaBertLightningModule(BaseOneShotLightningModule):
    """The search loop (see the module docstring). Wraps the evaluator's LightningModule.

    Args:
        training_module: the evaluator's module (e.g. :class:`distill.AdaBertDistillModule`).
        config: :class:`config.ArchitectureConfig`: the temperature schedule, Adam for the
            architecture logits, warm-up epochs, joint or alternating steps.
        seed: seed of the Gumbel noise generator (``None``: drawn from the global RNG,
            so ``pytorch_lightning.seed_everything`` still makes runs reproducible).
        grad_clip: max norm of the weight gradients (``None``: no clipping); the weights'
            optimizer is the evaluator's, stepped here by hand.
        log_every_n_steps: how often the choice probabilities are logged.
        latency: the measured :class:`LatencyTable` of this machine, which ``config.min_speedup`` needs.
    """

    def __init__(self, training_module: LightningModule, config: ArchitectureConfig = ArchitectureConfig(), *,
                 seed: Optional[int] = None, grad_clip: Optional[float] = None, log_every_n_steps: int = 10,
                 latency: Optional[LatencyTable] = None):
        super().__init__(training_module)
        self.config = config
        self.latency = latency
        self.tau = config.tau_start
        self.grad_clip = grad_clip or None
        self.log_every_n_steps = max(int(log_every_n_steps), 1)
        self.seed = int(torch.randint(0, 2**31, ()).item()) if seed is None else int(seed)
        self.generator = torch.Generator()
        self.generator.manual_seed(self.seed)
        self.history: List[Dict[str, Any]] = []
        self.last_sample: Sample = {}
        self.validated_arch: Sample = {}  # the child the current validation runs (use_argmax)

    # ------------------------------------------------------------------ sampling

    def straight_through_modules(self) -> List[StraightThroughBase]:
        return [m for m in self.supernet_modules() if isinstance(m, STRAIGHT_THROUGH_TYPES)]

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
        """Set every module to the exported choice (constant gates, :meth:`export`). Returns that
        architecture."""
        arch = self.export()
        draws: Dict[str, GumbelDraw] = {}
        for module in self.straight_through_modules():
            label = str(module.label)
            if label not in draws:
                draws[label] = argmax_draw(module._arch_alpha.detach(), module.values.index(arch[label]))
            module.draw = draws[label]
        return arch

    def budgets(self) -> List[budget.Budget]:
        """The budgets of :attr:`config` on this space (:func:`budget.budgets_of`)."""
        return budget.budgets_of(self.model.config, self.config, self.latency)

    def export(self) -> Sample:
        """The architecture to export: every choice's argmax when its cell reads its inputs, else, or
        with budgets, the most probable child whose cell does and within the budgets and their
        tolerance (:func:`budget.derive_within_budget`)."""
        budgets = self.budgets()
        if not budgets:
            argmax = super().export()
            if reads_inputs(argmax, self.model.config):
                return argmax
        probs = self.export_probs()
        space = self.model.config
        return budget.derive_within_budget(space, {label: probs[label] for label in space.edge_labels},
                                           probs[DEPTH_LABEL], budgets)

    def _distributions(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``([E, O] op probabilities, [K_max] depth probabilities)``, differentiable in the logits."""
        space = self.model.config
        alphas = {str(m.label): m._arch_alpha for m in self.straight_through_modules()}
        op_probs = torch.stack([torch.softmax(alphas[label], -1) for label in space.edge_labels])
        return op_probs, torch.softmax(alphas[DEPTH_LABEL], -1)

    def expected_params(self, include_embedding: Optional[bool] = None) -> torch.Tensor:
        """``E[params]`` of the child under the current distributions (differentiable in the logits),
        counted as ``max_params`` counts it unless ``include_embedding`` says otherwise."""
        if include_embedding is None:
            include_embedding = not self.config.budget_excludes_embedding
        return cost.expected_child_params(self.model.config, *self._distributions(), include_embedding)

    def _with_budget(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss`` plus each budget's penalty, weighted by ``budget_weight``."""
        budgets = self.budgets()
        if not budgets:
            return loss
        distributions = self._distributions()
        for b in budgets:
            penalty = b.penalty(b.expected(self.model.config, *distributions))
            self.log(f"train_budget_{b.setting}", penalty.detach())
            loss = loss + self.config.budget_weight * penalty
        return loss

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
        return self.config.tau_start + (self.config.tau_end - self.config.tau_start) * progress

    # ------------------------------------------------------------------ optimization

    def configure_architecture_optimizers(self):
        params = self.arch_parameters()
        if not params:
            raise ValueError("no architecture parameters found: was the space mutated by AdaBertStrategy?")
        return torch.optim.Adam(params, lr=self.config.arc_lr, weight_decay=self.config.arc_weight_decay)

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
        arch_on = self.trainer.current_epoch >= self.config.warmup_epochs
        # A held-out batch for the architecture (DARTS' split) means alternating steps.
        split = isinstance(batch, Mapping) and set(batch) == {"weights", "arch"}
        weights_batch, arch_batch = (batch["weights"], batch["arch"]) if split else (batch, batch)
        alternate = self.config.alternate or split

        if alternate and arch_on:
            self.resample()
            arc_optim.zero_grad()
            loss, _ = self._step_loss(arch_batch, 2 * batch_idx)
            self.manual_backward(self._with_budget(loss))
            arc_optim.step()

        self.resample()
        arc_optim.zero_grad()
        loss, out = self._step_loss(weights_batch, 2 * batch_idx + 1 if alternate else batch_idx)
        if arch_on and not alternate:
            loss = self._with_budget(loss)
        # zero weight grads -> backward (reaches weights AND architecture logits) -> weight step
        self.advance_optimization(loss, batch_idx, self.grad_clip)
        if arch_on and not alternate:
            arc_optim.step()
        self.advance_lr_schedulers(batch_idx)

        self.log("gumbel_tau", self.tau)
        if batch_idx % self.log_every_n_steps == 0:
            self.log_probs(self.export_probs())
        return out

    # ------------------------------------------------------------------ validation: the exported child

    def on_validation_epoch_start(self) -> None:
        self.validated_arch = self.use_argmax()  # nothing moves the distributions until the epoch ends
        hook = getattr(self.training_module, "on_validation_epoch_start", None)
        if hook is not None:
            hook()

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        return self.training_module.validation_step(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        self.training_module.on_validation_epoch_end()
        arch = self.validated_arch
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
        """Depth, params and FLOPs of ``arch`` (default: the exported child), and the expected params and
        :func:`top_prob_ratio` of the current distributions."""
        arch = self.export() if arch is None else arch
        config = getattr(self.model, "config", None)
        if config is None:
            return {"depth": float(arch.get(DEPTH_LABEL, 0))}
        return {
            "depth": float(arch[DEPTH_LABEL]),
            "params": float(cost.child_params(config, arch)),
            "params_without_embedding": float(cost.child_params(config, arch, include_embedding=False)),
            "flops": float(cost.child_flops(config, arch, config.max_positions)),
            "expected_params": float(self.expected_params(include_embedding=True).detach()),
            "top_prob_ratio": top_prob_ratio(self.export_probs()),
            **({"predicted_speedup": self.latency.speedup(config, arch)} if self.latency is not None else {}),
        }

    # ------------------------------------------------------------------ checkpoints

    def on_train_epoch_start(self) -> None:
        # The epoch's noise depends on (seed, epoch) only: a resumed run draws what an uninterrupted one would.
        self.generator.manual_seed(epoch_seed(self.seed, self.trainer.current_epoch))
        super().on_train_epoch_start()

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        # The architecture logits are parameters of the model (in state_dict); the Adam state
        # is saved by Lightning. Every epoch reseeds the Gumbel noise from the seed (a drawn seed, with
        # seed=None, must survive the resume); a checkpoint within an epoch resumes its generator's state.
        checkpoint["adabert"] = {"seed": self.seed, "history": self.history, "generator": self.generator.get_state()}

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        state = checkpoint.get("adabert")
        if state:
            self.seed = int(state.get("seed", self.seed))
            self.history = list(state.get("history", []))
            if "generator" in state:
                self.generator.set_state(state["generator"])


class AdaBertStrategy(OneShotStrategy):
    """AdaBERT's one-shot strategy: Gumbel straight-through, single-path, joint updates.

    Args:
        config: :class:`config.ArchitectureConfig` (paper: Adam lr 3e-4, weight decay 1e-3,
            temperature annealed towards 0); ``full`` runs every candidate op and every depth
            (full straight-through) instead of single-path.
        seed: seed of the Gumbel noise.
        grad_clip: max norm of the weight gradients.
        log_every_n_steps: how often choice probabilities are logged.
        latency: the machine's :class:`LatencyTable`, needed by ``config.min_speedup``.
        **overrides: fields of ``config`` to change, e.g. ``AdaBertStrategy(seed=0, arc_lr=3e-3)``.

    With a budget (``config.max_params``, ``config.min_speedup``) the strategy adds the budget
    penalties itself; give the evaluator's module ``beta=0`` (``SearchConfig.efficiency_beta``), or
    it adds the paper's L_E as well.

    The weight optimizer and learning-rate schedule are the evaluator's (see
    :class:`distill.AdaBertDistillModule`: SGD momentum 0.9, cosine 2e-2 -> 5e-4).
    Architecture logits start at zero (uniform distributions).
    """

    def __init__(self, config: Optional[ArchitectureConfig] = None, *, seed: Optional[int] = None,
                 grad_clip: Optional[float] = None, log_every_n_steps: int = 10,
                 latency: Optional[LatencyTable] = None, **overrides: Any):
        config = config if config is not None else ArchitectureConfig()
        arch_fields = {f.name for f in fields(ArchitectureConfig)}
        self.config = replace(config, **{k: v for k, v in overrides.items() if k in arch_fields})
        super().__init__(**{k: v for k, v in overrides.items() if k not in arch_fields})
        self.seed = seed
        self.grad_clip = grad_clip
        self.log_every_n_steps = log_every_n_steps
        if self.config.min_speedup is not None and latency is None:
            raise ValueError("min_speedup needs the machine's latency table: AdaBertStrategy(latency=...) "
                             "(workflows.speed.latency_table measures and caches it)")
        self.latency = latency
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
        return hook(module, name, memo, {"full": self.config.full, "every_depth": self.config.train_every_depth})

    def configure_oneshot_module(self, training_module: LightningModule) -> AdaBertLightningModule:
        return AdaBertLightningModule(training_module, self.config, seed=self.seed, grad_clip=self.grad_clip,
                                      log_every_n_steps=self.log_every_n_steps, latency=self.latency)
