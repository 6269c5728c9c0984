"""What one ``tokenweight bench keyfact`` call runs: rows, seeds, data variants and the one training budget."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from pathlib import Path

from tokenweight.errors import UserError

#: Data variants: config overrides of the training data (the evaluation set is always the same, clean one).
#: ``shortcut``: a sentence in 90% of the chosen training answers (10% of the rejected), an easy, non-decisive way
#: to grow the margin; ``shortcut-rejected``: the same sentence in 90% of the rejected answers, which plain DPO can
#: push down without bound (docs/KEYFACT.md, "Variants").
VARIANTS: dict[str, dict[str, float]] = {
    "base": {"keyfact_chosen_longer": 0.5, "keyfact_label_noise": 0.0},
    "verbosity": {"keyfact_chosen_longer": 0.8, "keyfact_label_noise": 0.0},
    "noise0.1": {"keyfact_chosen_longer": 0.5, "keyfact_label_noise": 0.1},
    "noise0.2": {"keyfact_chosen_longer": 0.5, "keyfact_label_noise": 0.2},
    "noise0.4": {"keyfact_chosen_longer": 0.5, "keyfact_label_noise": 0.4},
    "shortcut": {"keyfact_chosen_longer": 0.5, "keyfact_label_noise": 0.0, "keyfact_shortcut": 0.9},
    "shortcut-rejected": {"keyfact_chosen_longer": 0.5, "keyfact_label_noise": 0.0, "keyfact_shortcut": 0.1},
}
#: The learning rates ``--tune`` tries per row (× the budget's learning rate).
TUNE_FACTORS = (0.5, 1.0, 2.0)


def budget() -> dict:
    """The KeyFact training budget of ``tokenweight train`` (``keyfact.settings.KEYFACT_DEFAULTS``): learning rate, epochs,
    batch size, max length, and β when it sets one (else every scheme's own default β, as in ``train``)."""
    from tokenweight.keyfact.settings import KEYFACT_DEFAULTS as defaults

    return {"learning_rate": defaults["learning_rate"], "epochs": float(defaults["num_train_epochs"]),
            "batch_size": defaults["per_device_train_batch_size"], "max_length": defaults["max_length"],
            "beta": defaults.get("beta")}


@dataclass
class BenchSettings:
    """Every run shares all of this except its row, variant and seed.

    ``rows``: table rows (:func:`~tokenweight.keyfact.bench.rows.bench_row`). ``base_seeds``: the base models every run is
    repeated on (base-model replicas; default: the shipped replicas of the built-in facts,
    :func:`~tokenweight.keyfact.shipped.replica_seeds`). Ablation rows (``scheme:ablation``) run on the first variant
    and on those of ``ablation_variants`` that run (the label-noise end point: which part of a scheme carries its
    noise robustness). ``eval_seed`` (``keyfact_eval_seed``) draws the fixed evaluation set
    (independent of the training seeds) and the disjoint ``validation`` split ``--tune`` selects on. ``jobs``: worker processes (one thread each).
    ``trained_models_all_variants``: a row whose scheme trains models first (``trained_models``; TIS-DPO, three
    trainings per run) runs on every variant (True) or, like the ablation rows, on the first only (False).
    ``trained_models_lr_factor``: those models train at this fraction of the budget learning rate (0.1). Upstream
    trains TIS-DPO's contrastive models mildly (lr 5e-7, 1 epoch); at the policy's full KeyFact rate they memorised
    the training pairs (most chosen keys at the weight cap) and their weights landed on the rejected side's filler.
    """

    rows: list[str]
    seeds: list[int]
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    model_size: str = "default"
    base_seeds: list[int] = field(default_factory=lambda: list(_replicas("default", None)))
    facts: str | None = None
    train_size: int = 512
    eval_size: int = 512
    eval_seed: int = 0
    validation_size: int = 128
    learning_rate: float = field(default_factory=lambda: budget()["learning_rate"])
    epochs: float = field(default_factory=lambda: budget()["epochs"])
    batch_size: int = field(default_factory=lambda: budget()["batch_size"])
    max_length: int = field(default_factory=lambda: budget()["max_length"])
    beta: float | None = field(default_factory=lambda: budget()["beta"])
    max_new_tokens: int = 40
    curve_points: int = 4
    curve_eval_size: int = 64
    heatmap_pairs: int = 3
    bootstrap: int = 2000
    jobs: int = 1
    tune: bool = False
    trained_models_all_variants: bool = False
    trained_models_lr_factor: float = 0.1
    ablation_variants: list[str] = field(default_factory=lambda: ["noise0.4"])

    def __post_init__(self):
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise UserError(f"--variants: unknown KeyFact variant(s) {unknown}; known: {list(VARIANTS)}")
        if not self.rows or not self.seeds or not self.variants or not self.base_seeds:
            raise UserError("the benchmark needs at least one scheme, one seed, one base model and one variant")
        if len(set(self.base_seeds)) != len(self.base_seeds) or len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"--base_seeds / --seeds repeat a value: {self.base_seeds} / {self.seeds}")
        if self.jobs < 1:
            raise UserError(f"--jobs must be at least 1, got {self.jobs}")
        if self.trained_models_lr_factor <= 0:
            raise UserError(f"trained_models_lr_factor must be > 0, got {self.trained_models_lr_factor}")

    @property
    def ablation_variant(self) -> str:
        return self.variants[0]

    def runs_ablations(self, variant: str) -> bool:
        """Whether the ablation rows run on ``variant``."""
        return variant == self.ablation_variant or variant in self.ablation_variants


def _replicas(size: str, facts: str | None) -> tuple[int, ...]:
    from tokenweight.keyfact.shipped import replica_seeds
    return replica_seeds(size, facts)


def default_base_seeds(size: str, facts: str | None) -> list[int]:
    """The shipped replicas of ``size`` on ``facts``; base seed 0 alone for a facts file that ships none (its base
    model is built on first use; ``--base_seeds`` asks for more)."""
    return list(_replicas(size, facts)) or [0]


def saved_settings(results: dict) -> BenchSettings:
    """The :class:`BenchSettings` a ``results.json`` records."""
    return BenchSettings(**{k: v for k, v in results["settings"].items() if k in BenchSettings.__dataclass_fields__})


def quick_settings(settings: BenchSettings) -> BenchSettings:
    """The ``--quick`` budget: the small base model (its two shipped replicas), tiny data, one epoch, the base
    variant, two seeds."""
    return replace(settings, model_size="small", train_size=32, eval_size=16, validation_size=16, epochs=1.0,
                   batch_size=8, max_new_tokens=24, curve_points=2, curve_eval_size=8, heatmap_pairs=1,
                   bootstrap=200, seeds=settings.seeds[:2], variants=["base"],
                   base_seeds=default_base_seeds("small", settings.facts))


def run_config(settings: BenchSettings, row, variant: str, seed: int, output_dir: Path,
               learning_rate: float):
    """The :class:`TokenweightConfig` of one run of ``row`` (a :class:`~tokenweight.keyfact.bench.rows.BenchRow`): the
    KeyFact budget, the variant's data, the row's overrides."""
    from tokenweight.config import TokenweightConfig
    from tokenweight.keyfact.settings import KEYFACT_DEFAULTS

    known = {f.name for f in dataclasses.fields(TokenweightConfig)}
    for source, overrides in ((f"variant {variant!r}", VARIANTS[variant]), (f"row {row.label!r}", row.overrides)):
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise UserError(f"KeyFact bench {source} sets {unknown}, which this version's config does not have")
    return TokenweightConfig(**{
        **KEYFACT_DEFAULTS, "output_dir": str(output_dir), "weighting": row.scheme, "seed": seed, "keyfact_seed": seed,
        "keyfact_facts": settings.facts, "keyfact_train_size": settings.train_size, "keyfact_eval_size": 1,
        "keyfact_validation_size": 1,
        "num_train_epochs": settings.epochs, "per_device_train_batch_size": settings.batch_size,
        "per_device_eval_batch_size": settings.batch_size, "learning_rate": learning_rate, "beta": settings.beta,
        "max_length": settings.max_length, "logging_strategy": "no", "save_strategy": "no", "report_to": "none",
        "disable_tqdm": True, **VARIANTS[variant], **row.overrides})
