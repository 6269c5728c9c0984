"""The weighting-scheme interface and its registry.

Every scheme turns one collated preference batch into per-token weights ω (see DESIGN.md):

    Δ = Σ_i ω_c,i (log π_θ − log π_ref)(y_c,i) − Σ_j ω_r,j (log π_θ − log π_ref)(y_r,j)

Alignment convention used across the library ("shifted" tensors, length ``L - 1``): index ``t`` refers to the
token ``input_ids[:, t + 1]``; ``token_logps[:, t] = log p(input_ids[:, t + 1] | input_ids[:, : t + 1])``;
``hidden[:, t]`` is the final (post-norm) hidden state at position ``t``, i.e. the state that *predicts* token
``t + 1``; ``loss_mask[:, t] = completion_mask[:, t + 1]``. Rows ``[0, B)`` are the chosen responses and rows
``[B, 2B)`` the rejected responses of the same pairs.

Adding a scheme = one file or folder in ``weights/`` with its settings dataclass (flags ``<name>_…``) and a
:class:`WeightingScheme` subclass decorated with :func:`register_scheme`; ``weights/__init__.py`` imports every module
of the package, which registers it (docs/ADDING_A_SCHEME.md). The run configuration gains the settings' fields by
itself.

Where the library meets a scheme: :meth:`WeightingScheme.prepare` on every split before tokenization (training,
``tokenweight eval``, ``weights``, ``bench``, ``precompute``), and :func:`weigh_batch` on every batch (the trainer's
``compute_loss`` and evaluation). Nothing outside ``weights/`` branches on a scheme's name.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from tokenweight.errors import UserError
from tokenweight.objectives import LOSS_TYPES
from tokenweight.weights.tooling import SchemeTooling

if TYPE_CHECKING:
    import datasets

#: β of a run that leaves ``beta`` unset, for a scheme without a default of its own.
DEFAULT_BETA = 0.1


@dataclass
class WeightingInputs:
    """What a scheme may look at for one batch of ``B`` pairs (``2B`` rows, chosen then rejected).

    Attributes:
        input_ids: ``[2B, L]`` token ids, right padded.
        attention_mask: ``[2B, L]`` 1 on real tokens.
        completion_mask: ``[2B, L]`` 1 on completion (response) tokens, EOS included.
        loss_mask: ``[2B, L-1]`` bool, ``completion_mask`` shifted (the collated batch's ``loss_mask``).
        batch: the full collated batch (extra columns such as ``token_weights`` or ``row_index``).
        model: the policy model (possibly wrapped by accelerate/DDP/FSDP).
        hidden: ``[2B, L-1, d]`` detached fp32-or-model-dtype final hidden states in shifted alignment, only for
            schemes with ``needs_hidden_states = True`` (``None`` otherwise).
        policy_logps: ``[2B, L-1]`` the policy's detached per-token log-probs of this batch's forward, only for
            schemes with ``needs_policy_logps = True`` (ConfPO's confidence selection; ``None`` otherwise).
        want_plan: True when the caller shows the scheme's pair coupling (``tokenweight weights``): a scheme that
            has one (OTPO's transport plan) returns it in :attr:`TokenWeights.plan`; training leaves it False.
        step: the trainer's global step of a training batch; ``None`` in evaluation (a scheme that draws random
            weights seeds them with it and ``batch["row_index"]``, see :func:`row_seeds`).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    loss_mask: torch.Tensor
    batch: dict[str, Any]
    model: nn.Module | None = None
    hidden: torch.Tensor | None = None
    policy_logps: torch.Tensor | None = None
    want_plan: bool = False
    step: int | None = None


@dataclass
class TokenWeights:
    """A scheme's output: ``weights`` is ``[2B, L-1]``, detached, exactly 0 where ``loss_mask`` is False.

    ``ref_weights`` ``[2B, L-1]`` (same rules) weighs the *reference* log-probs when they differ from the policy's
    (SamPO draws its token subsets independently for the two): Δ = Σ ω ℓ_θ − Σ ω_ref ℓ_ref per response; ``None``
    (every other scheme): ``weights`` weigh both, Δ = Σ ω (ℓ_θ − ℓ_ref).

    ``metrics`` holds scheme-specific scalars to log, each of a declared kind (:mod:`tokenweight.metrics`): a plain
    tensor or float is a mean (``otpo/iterations``), a :class:`~tokenweight.metrics.Count` a count
    (``otpo/unconverged_pairs``); the generic weight statistics (``weights/mean`` …) are computed by the trainer for
    every scheme.
    """

    weights: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    ref_weights: torch.Tensor | None = None
    #: ``[B]`` optional detached factors of each pair's loss (ConfPO: 0 for a pair with an empty token set, which
    #: stays in the batch mean); multiplied with WPO's pair weights under ``use_weighting``.
    pair_weights: torch.Tensor | None = None
    #: ``[B, N, M]`` an optional coupling of each pair's chosen and rejected tokens, both packed left in completion
    #: order (OTPO: its transport plan, scaled like the weights), shown by ``tokenweight weights``.
    plan: torch.Tensor | None = None


@dataclass
class PrepareContext:
    """What :meth:`WeightingScheme.prepare` may use for one split.

    Attributes:
        config: the run's :class:`~tokenweight.config.TokenweightConfig` (length limits, the scheme's settings).
        model_path: the frozen initial model: the policy's checkpoint, i.e. the reference (AttentionPO's judge).
        tokenizer: the run's tokenizer.
        output_dir: the run's folder, where the scheme may cache what it computes; ``None``: compute in memory and
            write nothing (``tokenweight eval`` and ``weights``).
        summary: the run's data summary ``{split: {...}}`` (``results.json``) when there is one: the scheme adds its
            counts under ``summary[split]``.
        model: the model at ``model_path``, when the caller has it in memory already (saves loading it again).
    """

    config: Any
    model_path: str
    tokenizer: Any
    output_dir: str | None = None
    summary: dict | None = None
    model: nn.Module | None = None

    def cache_folder(self, chosen: str | None, default_name: str, split: str) -> Path | None:
        """Where a scheme caches what it computes for ``split``: the folder the user ``chosen`` (a scheme setting),
        else ``output_dir/default_name``; another split than ``train`` in its sub-folder ``split``. ``None``
        without ``output_dir`` (compute in memory)."""
        if self.output_dir is None:
            return None
        folder = Path(chosen or Path(self.output_dir, default_name))
        return folder if split == "train" else folder / split


@dataclass
class LossContext:
    """What a scheme's extra loss term may use (TI-DPO's TDPO2 KL and triplet loss).

    Attributes:
        model, ref_model: policy (trainable) and frozen reference (``ref_model`` is ``None`` when reference
            log-probs come from a cache, and for a reference-free scheme).
        inputs: the :class:`WeightingInputs` of the batch.
        policy_logps: ``[2B, L-1]`` per-token log-probs of the policy, with grad.
        ref_logps: ``[2B, L-1]`` per-token log-probs of the reference, no grad; ``None`` for a reference-free
            scheme (``uses_reference = False``).
        policy_hidden / ref_hidden: ``[2B, L-1, d]`` final hidden states (policy with grad), only when the scheme
            sets ``needs_hidden_states``; ``None`` otherwise.
        policy_kl: ``[2B, L-1]`` fp32 per-token ``KL(π_ref ‖ π_θ)`` over the full vocabulary at the response
            positions (0 elsewhere), with grad, from the policy's own scoring pass; set by the trainer when the
            scheme sets ``needs_hidden_for_loss`` and a reference model is in memory, else ``None``.
        weights: ``[2B, L-1]`` the scheme's token weights for this batch.
        step: the trainer's global step of a training batch; ``None`` in evaluation (TI-DPO seeds anchors with it).
    """

    model: nn.Module
    ref_model: nn.Module | None
    inputs: WeightingInputs
    policy_logps: torch.Tensor
    ref_logps: torch.Tensor | None
    weights: torch.Tensor
    policy_hidden: torch.Tensor | None = None
    ref_hidden: torch.Tensor | None = None
    step: int | None = None
    policy_kl: torch.Tensor | None = None


@dataclass(frozen=True)
class SchemeContext:
    """The few run settings, shared by every scheme, that a scheme may use besides its own settings.

    Attributes:
        beta: the run's β (explicit, else the scheme's :meth:`WeightingScheme.default_beta`).
        loss_type: the pair loss, ``sigmoid``, ``ipo`` or ``hinge``.
        max_length: the cap on prompt + completion tokens (``None``: none).
        seed: the run's seed (TI-DPO seeds its anchors with it).
    """

    beta: float = DEFAULT_BETA
    loss_type: str = "sigmoid"
    max_length: int | None = None
    seed: int = 0


class WeightingScheme:
    """Base class of a weighting scheme.

    The trainer calls :meth:`compute` *before* the policy forward when neither ``needs_hidden_states`` nor
    ``needs_policy_logps`` is set (so a scheme may run its own passes without two graphs alive at once), and
    *after* it otherwise, with ``inputs.hidden`` / ``inputs.policy_logps`` filled.

    A scheme with ``uses_reference = False`` (SimPO, ConfPO) is reference-free: its Δ is the weighted sum of the
    policy's own log-probs, ``Σ ω_c log π_θ(y_c) − Σ ω_r log π_θ(y_r)``; no reference model is loaded, moved or
    precomputed for it in training (``tokenweight train``, the trainer, ``eval``'s weighted scores, the bench's
    trainer honour the flag).

    A scheme is built from its own settings (an instance of ``settings_class``, a dataclass whose fields are the
    scheme's flags, ``<name>_…``, validated in its ``__post_init__``; ``None`` when the scheme has no settings)
    and a :class:`SchemeContext`; :func:`build_scheme` takes both from a run configuration.
    """

    name: ClassVar[str] = ""
    needs_hidden_states: ClassVar[bool] = False
    #: True: :meth:`compute` runs after the policy forward with ``inputs.policy_logps`` (detached) filled.
    needs_policy_logps: ClassVar[bool] = False
    #: False for a reference-free scheme: no reference model or reference log-probs in training (see above; the
    #: KeyFact bench still loads the base model, to *measure* the policy against it).
    uses_reference: ClassVar[bool] = True
    #: The pair losses (config key ``loss_type``) the scheme supports; another is refused when the run is built.
    loss_types: ClassVar[tuple[str, ...]] = LOSS_TYPES
    #: The dataclass of the scheme's flags; the run configuration is composed of every registered one.
    settings_class: ClassVar[type | None] = None
    #: True when the scheme's token weights may be negative (TGDPO's 1 − αβ·r on a rejected token whose guidance
    #: reward r exceeds 1/(αβ)): :func:`check_weights` and the weight-column validation then refuse only non-finite
    #: weights and weight outside the completion.
    signed_weights: ClassVar[bool] = False
    #: What the commands and the bench read about the scheme (weight columns, models trained first, cache key,
    #: ablations), apart from training: :class:`~tokenweight.weights.tooling.SchemeTooling`.
    tooling: ClassVar[SchemeTooling] = SchemeTooling()

    def __init__(self, settings: Any = None, context: SchemeContext | None = None):
        if self.settings_class is not None and settings is None:
            settings = self.settings_class()
        self.settings = settings
        self.context = SchemeContext() if context is None else context
        self.check_loss_type(self.context.loss_type)

    @classmethod
    def check_loss_type(cls, loss_type: str) -> None:
        """Refuse a ``loss_type`` outside the scheme's :attr:`loss_types` (a :class:`UserError` naming both)."""
        if loss_type not in cls.loss_types:
            raise UserError(f"config key `loss_type`: weighting={cls.name} supports {', '.join(cls.loss_types)}, "
                            f"not {loss_type}")

    @property
    def needs_hidden_for_loss(self) -> bool:
        """True when :meth:`extra_loss` / :meth:`margin_offset` need ``LossContext.policy_hidden/ref_hidden``
        even though the weights themselves are computed before the forward (TI-DPO's TDPO2 KL term)."""
        return False

    @classmethod
    def default_beta(cls, settings: Any = None) -> float:
        """β of a run with this scheme that sets no ``beta`` (precedence: explicit ``beta`` > this); ``settings``
        is an instance of ``settings_class`` (or any object with its fields), ``None`` for the defaults."""
        return DEFAULT_BETA

    def prepare(self, raw: "datasets.Dataset", split: str, context: PrepareContext) -> "datasets.Dataset":
        """The raw preference rows of ``split`` with what the scheme reads added as columns (AttentionPO: the judge's
        ``chosen_weights``/``rejected_weights``), the same rows in the same order; tokenization follows. The default
        adds nothing (a scheme without a prepare hook; see :func:`has_prepare`)."""
        return raw

    @classmethod
    def has_prepare(cls) -> bool:
        """True when the scheme overrides :meth:`prepare` (``tokenweight precompute <scheme>`` offers it)."""
        return cls.prepare is not WeightingScheme.prepare

    def compute(self, inputs: WeightingInputs) -> TokenWeights:
        raise NotImplementedError

    def margin_offset(self, ctx: LossContext) -> tuple[torch.Tensor, dict[str, float]] | None:
        """A ``[B]`` term subtracted from the margin Δ inside the pair loss (TDPO2's α(K_l − sg K_w)), with
        metrics; ``None``: no offset."""
        return None

    def extra_loss(self, ctx: LossContext) -> tuple[torch.Tensor, dict[str, float]] | None:
        """A scalar term added to the mean pair loss (TI-DPO's γ·triplet), with metrics; ``None``: no term."""
        return None


SCHEMES: dict[str, type[WeightingScheme]] = {}


def register_scheme(cls: type[WeightingScheme]) -> type[WeightingScheme]:
    """Class decorator adding a scheme to :data:`SCHEMES` under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} must set a non-empty `name` to be registered")
    if cls.name in SCHEMES and SCHEMES[cls.name] is not cls:
        raise ValueError(f"weighting scheme {cls.name!r} is already registered by {SCHEMES[cls.name].__name__}")
    if cls.settings_class is not None and not dataclasses.is_dataclass(cls.settings_class):
        raise TypeError(f"{cls.__name__}.settings_class must be a dataclass, got {cls.settings_class!r}")
    SCHEMES[cls.name] = cls
    return cls


def scheme_class(name: str) -> type[WeightingScheme]:
    """The registered scheme ``name``; an unknown name is an error listing the known ones."""
    if name not in SCHEMES:
        raise ValueError(f"unknown weighting scheme {name!r} (config key `weighting`); known: {sorted(SCHEMES)}")
    return SCHEMES[name]


def scheme_settings(name: str, config: Any = None) -> Any:
    """The settings of scheme ``name`` read from ``config`` (an object with the settings' fields as attributes,
    such as the run's :class:`~tokenweight.config.TokenweightConfig`); the defaults when ``config`` is ``None``;
    ``None`` for a scheme without settings."""
    settings_class = scheme_class(name).settings_class
    if settings_class is None:
        return None
    if config is None:
        return settings_class()
    return settings_class(**{item.name: getattr(config, item.name) for item in dataclasses.fields(settings_class)
                             if item.init})


def build_scheme(name: str, config: Any = None) -> WeightingScheme:
    """Instantiate the registered scheme ``name`` from ``config``: its settings (:func:`scheme_settings`) and the
    shared :class:`SchemeContext` (``config``'s β — explicit, else the scheme's default — ``loss_type``,
    ``max_length``, ``seed``); ``config=None`` gives the defaults. An unknown name is an error listing the
    known ones."""
    cls = scheme_class(name)
    settings = scheme_settings(name, config)
    if config is None:
        return cls(settings, SchemeContext(beta=cls.default_beta(settings)))
    beta = config.beta if config.beta is not None else cls.default_beta(settings)
    return cls(settings, SchemeContext(beta=beta, loss_type=config.loss_type, max_length=config.max_length,
                                       seed=config.seed))


def batch_inputs(batch: dict[str, Any], model: nn.Module | None, want_plan: bool = False,
                 step: int | None = None) -> WeightingInputs:
    """The :class:`WeightingInputs` of one collated batch (``[2B, L]`` tensors, chosen rows then rejected rows);
    ``step`` is the trainer's global step of a training batch, ``None`` in evaluation."""
    return WeightingInputs(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           completion_mask=batch["completion_mask"], loss_mask=batch["loss_mask"],
                           batch=batch, model=model, want_plan=want_plan, step=step)


def dataset_rows(inputs: WeightingInputs, purpose: str) -> list[int]:
    """The dataset row of each of the batch's ``B`` pairs (``batch["row_index"]`` ``[B]``, as
    :func:`~tokenweight.data.tokenize_preference_dataset` gives it); an error naming ``purpose`` when missing."""
    pairs = inputs.input_ids.shape[0] // 2
    rows = inputs.batch.get("row_index")
    if rows is None or rows.shape != (pairs,) or (rows < 0).any():
        raise ValueError(f"{purpose} seeds each pair's draw from its dataset row: the batch needs `row_index` "
                         f"[{pairs}] (>= 0), as tokenize_preference_dataset gives it")
    return rows.tolist()


def row_seeds(tag: str, seed: int, rows: list[int], step: int | None) -> list[int]:
    """One 63-bit generator seed per dataset row: a hash of ``(tag, seed, step, row)``, so a scheme's random draw
    for a row depends on the run's seed, the global step and the row only (not on the global RNG, the batch's other
    rows or how often the model was evaluated; a resumed run repeats it). ``step=None`` (evaluation) gives the same
    seed for a row at every evaluation; ``tag`` keeps the draws of different uses apart."""
    phase = "eval" if step is None else f"step {step}"
    return [int.from_bytes(hashlib.blake2b(f"{tag}/{seed}/{phase}/{row}".encode(), digest_size=8).digest(),
                           "little") >> 1 for row in rows]


def weigh_batch(scheme: WeightingScheme, inputs: WeightingInputs,
                forward: Callable[[bool], Any]) -> tuple[TokenWeights, Any]:
    """Weigh one batch as every caller must: the scheme's weights and the policy forward, in the scheme's order.

    ``forward(return_hidden)`` runs the policy on the batch and returns its
    :class:`~tokenweight.logps.TokenScores` (``token_logps`` ``[2B, L-1]``, ``hidden`` ``[2B, L-1, d]`` when asked
    for); it is asked for hidden states when the weights or the loss need them. Without ``needs_hidden_states`` or
    ``needs_policy_logps`` the weights are computed *before* the forward (a scheme's own passes never overlap the
    policy's graph), else after it from the forward's detached hidden states / token log-probs (``inputs.hidden``,
    ``inputs.policy_logps`` are filled). The weights (and pair weights) are detached and checked
    (:func:`check_weights`). Returns
    ``(token weights, policy scores)``.
    """
    want_hidden = scheme.needs_hidden_states or scheme.needs_hidden_for_loss
    after_forward = scheme.needs_hidden_states or scheme.needs_policy_logps
    if not after_forward:
        token_weights = scheme.compute(inputs)
    policy = forward(want_hidden)
    if after_forward:
        if scheme.needs_hidden_states:
            inputs.hidden = policy.hidden.detach()
        if scheme.needs_policy_logps:
            inputs.policy_logps = policy.token_logps.detach()
        token_weights = scheme.compute(inputs)
    token_weights.weights = token_weights.weights.detach()
    check_weights(token_weights.weights, inputs.loss_mask, scheme.name, scheme.signed_weights)
    if token_weights.ref_weights is not None:
        token_weights.ref_weights = token_weights.ref_weights.detach()
        check_weights(token_weights.ref_weights, inputs.loss_mask, f"{scheme.name} (reference weights)")
    if token_weights.pair_weights is not None:
        token_weights.pair_weights = token_weights.pair_weights.detach()
    return token_weights, policy


def check_weights(weights: torch.Tensor, loss_mask: torch.Tensor, scheme: str, signed: bool = False) -> None:
    """Raise if ``weights`` ``[2B, L-1]`` is misshaped, non-finite, negative (unless ``signed``), or non-zero outside
    ``loss_mask``."""
    if weights.shape != loss_mask.shape:
        raise ValueError(f"scheme {scheme!r} returned weights of shape {tuple(weights.shape)}, "
                         f"expected {tuple(loss_mask.shape)}")
    bad_rows = (~torch.isfinite(weights)).any(dim=1).nonzero().flatten().tolist()
    if bad_rows:
        raise FloatingPointError(f"scheme {scheme!r} produced non-finite token weights in batch rows {bad_rows}")
    if not signed and (weights < 0).any():
        raise ValueError(f"scheme {scheme!r} produced negative token weights")
    if (weights.masked_fill(loss_mask, 0) != 0).any():
        raise ValueError(f"scheme {scheme!r} put weight outside the completion tokens")
