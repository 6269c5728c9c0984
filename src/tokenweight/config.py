"""The run configuration: every ``transformers.TrainingArguments`` flag plus tokenweight's own.

Names follow TRL's ``DPOConfig`` where the meaning is the same (``beta``, ``loss_type``, ``label_smoothing``,
``max_length``, ``max_prompt_length``). Scheme settings carry the scheme's prefix (``otpo_``, ``tidpo_``,
``attention_``). TI-DPO settings left at ``None`` come from the chosen ``tidpo_preset``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments


@dataclass
class TokenweightConfig(TrainingArguments):
    # ---------------------------------------------------------------- model and data
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "Policy model (hub id or local folder). Default: the built-in KeyFact tiny model."})
    ref_model_name_or_path: str | None = field(default=None, metadata={
        "help": "Frozen reference model. Default: a fresh copy loaded from model_name_or_path."})
    model_dtype: str = field(default="auto", metadata={
        "help": "dtype to load the models in: auto, float32, bfloat16 or float16."})
    attn_implementation: str | None = field(default=None, metadata={
        "help": "Attention kernel passed to from_pretrained (sdpa, eager, flash_attention_2)."})
    use_peft: bool = field(default=False, metadata={
        "help": "Train LoRA adapters instead of the full policy (the reference stays a separate frozen copy)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling α."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(default=None, metadata={
        "help": "Module names that get adapters (default: all linear layers but the output head)."})
    dataset_name: str | None = field(default=None, metadata={
        "help": "Preference data: hub id, local .json/.jsonl/.parquet/.csv file or folder. "
                "Default: the built-in KeyFact task."})
    dataset_split: str = field(default="train", metadata={"help": "Split used for training."})
    eval_split: str | None = field(default=None, metadata={"help": "Split used for evaluation (none: no eval)."})
    max_length: int | None = field(default=1024, metadata={
        "help": "Max tokens of prompt + completion; completions are cut on the right, rows whose prompt fills "
                "it are dropped (counted)."})
    max_prompt_length: int | None = field(default=None, metadata={
        "help": "Max prompt tokens; longer prompts keep their last tokens."})
    # ---------------------------------------------------------------- objective
    weighting: str = field(default="uniform", metadata={
        "help": "Token-weighting scheme: uniform (plain DPO), column, otpo, tidpo, attention."})
    beta: float | None = field(default=None, metadata={
        "help": "DPO temperature β. Default 0.1 (TI-DPO: from the preset)."})
    loss_type: str = field(default="sigmoid", metadata={"help": "Pair loss: sigmoid (DPO), ipo or hinge."})
    label_smoothing: float = field(default=0.0, metadata={"help": "cDPO label smoothing (sigmoid loss only)."})
    precompute_ref_log_probs: bool = field(default=False, metadata={
        "help": "Score the data once with the reference before training and free it (not with TI-DPO's KL term)."})
    ref_log_probs: str | None = field(default=None, metadata={
        "help": "Folder of cached reference log-probs (`tokenweight precompute reference --output DIR`): no "
                "reference model is loaded; the cache must match the model, tokenizer, data and lengths."})
    precompute_ref_batch_size: int | None = field(default=None, metadata={
        "help": "Pairs per reference forward of the precompute (default: per_device_eval_batch_size)."})
    disable_dropout: bool = field(default=True, metadata={"help": "Turn dropout off in policy and reference."})
    logps_chunk_size: int = field(default=256, metadata={
        "help": "Sequence chunk of the memory-lean log-prob head (smaller: less memory)."})
    # ---------------------------------------------------------------- OTPO
    otpo_reg: float = field(default=1.0, metadata={"help": "OTPO entropic regulariser ε1 (POT `reg`)."})
    otpo_reg_m: list[float] = field(default_factory=lambda: [0.2], metadata={
        "help": "OTPO marginal relaxation ε2 (POT `reg_m`): one value, or two (rows, columns)."})
    # ---------------------------------------------------------------- TI-DPO (None: from the preset)
    tidpo_preset: str = field(default="paper", metadata={"help": "TI-DPO preset: paper or upstream."})
    tidpo_lambda: float | None = field(default=None, metadata={"help": "Attribution vs prior mix λ."})
    tidpo_sigma_div: float | None = field(default=None, metadata={"help": "Prior σ = T / sigma_div."})
    tidpo_span: str | None = field(default=None, metadata={"help": "Weighted span: response or full."})
    tidpo_kl_alpha: float | None = field(default=None, metadata={"help": "TDPO2 KL weight α (0: off)."})
    tidpo_gamma: float | None = field(default=None, metadata={"help": "Triplet loss weight γ (0: off)."})
    tidpo_margin: float | None = field(default=None, metadata={"help": "Triplet margin."})
    tidpo_anchor_top_k: int | None = field(default=None, metadata={"help": "Anchor sampling top-k (50)."})
    tidpo_anchor_top_p: float | None = field(default=None, metadata={"help": "Anchor sampling top-p (0.95)."})
    tidpo_anchor_temperature: float | None = field(default=None, metadata={"help": "Anchor temperature (0.8)."})
    tidpo_anchor_max_new_tokens: int | None = field(default=None, metadata={"help": "Anchor length cap (64)."})
    tidpo_on_failure: str | None = field(default=None, metadata={
        "help": "raise (default) on a non-finite attribution/KL/triplet; count: drop that part for the step and "
                "count it in tidpo/*_failures."})
    # ---------------------------------------------------------------- AttentionPO
    attention_weights: str | None = field(default=None, metadata={
        "help": "Folder of precomputed attention weights (computed there first when missing)."})
    attention_layers: list[int] | None = field(default=None, metadata={
        "help": "Judge layers whose attention rows are averaged (default: the last)."})
    attention_template: str | None = field(default=None, metadata={"help": "Judge template file."})
    attention_eos_weight: float = field(default=0.0, metadata={
        "help": "Weight of trailing end-of-turn/EOS completion tokens."})
    attention_max_length: int | None = field(default=None, metadata={
        "help": "Judge input cap in tokens (default: the model's context)."})
    attention_batch_size: int = field(default=4, metadata={"help": "Judge passes per batch."})
    # ---------------------------------------------------------------- built-in KeyFact task
    keyfact_facts: str | None = field(default=None, metadata={"help": "KeyFact facts JSON (default: built-in)."})
    keyfact_train_size: int = field(default=512, metadata={"help": "KeyFact training pairs."})
    keyfact_eval_size: int = field(default=128, metadata={"help": "KeyFact held-out pairs."})
    keyfact_chosen_longer: float = field(default=0.5, metadata={
        "help": "Probability that the chosen answer has more filler (0.8: verbosity trap)."})
    keyfact_label_noise: float = field(default=0.0, metadata={"help": "Fraction of swapped training pairs."})
    keyfact_seed: int = field(default=0, metadata={"help": "KeyFact data and base-model seed."})
    keyfact_model_size: str = field(default="default", metadata={
        "help": "KeyFact base model size: default, or small (seconds to build; for tests)."})

    def __post_init__(self):
        if self.output_dir is None:
            self.output_dir = "outputs/tokenweight"
        self.remove_unused_columns = False
        super().__post_init__()
        if self.loss_type not in ("sigmoid", "ipo", "hinge"):
            raise ValueError(f"config key `loss_type`: {self.loss_type!r} is not one of sigmoid, ipo, hinge")
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ValueError("config key `label_smoothing`: only supported with loss_type=sigmoid")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError("config key `label_smoothing` must be in [0, 0.5)")
        if len(self.otpo_reg_m) not in (1, 2):
            raise ValueError("config key `otpo_reg_m`: give one value or two (rows, columns)")
        if self.beta is not None and self.beta <= 0:
            raise ValueError("config key `beta` must be positive")

    @property
    def effective_beta(self) -> float:
        """β of the run: the explicit value, else the TI-DPO preset's, else 0.1."""
        if self.beta is not None:
            return self.beta
        if self.weighting == "tidpo":
            from tokenweight.tidpo.presets import preset_beta
            return preset_beta(self.tidpo_preset)
        return 0.1
