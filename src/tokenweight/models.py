"""Loading the policy, the frozen reference and the tokenizer (hub ids and local folders alike)."""

from __future__ import annotations

import sys

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from tokenweight.errors import UserError

_DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def not_loadable(path: str, what: str, error: Exception) -> UserError:
    """The one-line error of a model or tokenizer that cannot be loaded from ``path`` (the cause's first line)."""
    cause = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
    return UserError(f"{path}: cannot load its {what} ({type(error).__name__}: {cause})")


#: What loading a folder that is not a (complete) model or tokenizer raises.
LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError)


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """The tokenizer at ``path``, with a pad token (the EOS token when it has none); a folder without a loadable
    tokenizer is a :class:`UserError` naming it."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except LOAD_ERRORS as error:
        raise not_loadable(path, "tokenizer", error) from error
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError(f"tokenizer of {path} has neither a pad nor an EOS token; set one")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str, dtype: str = "auto", attn_implementation: str | None = None) -> nn.Module:
    """A causal LM from a hub id or a folder written by ``save_pretrained``."""
    if dtype not in _DTYPES:
        raise UserError(f"config key `model_dtype`: {dtype!r} is not one of {sorted(_DTYPES)}")
    kwargs = {"dtype": _DTYPES[dtype]}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except LOAD_ERRORS as error:
        raise not_loadable(path, "model", error) from error


def master_weights(policy: nn.Module, fp32: bool, learning_rate: float) -> nn.Module:
    """The policy to train: its floating-point parameters in float32 when ``fp32`` (master weights: AdamW's small
    updates accumulate; the trainer's ``bf16``/``fp16`` autocast keeps the compute in half precision), else as
    loaded, with a warning when ``learning_rate`` is below half the spacing of the half-precision numbers around
    the typical weight (AdamW's first updates are about ``learning_rate`` in size, so most would round away)."""
    if fp32:
        return policy.float()
    half = [p for p in policy.parameters() if p.dtype in (torch.bfloat16, torch.float16)]
    if half:
        dtype = half[0].dtype
        typical = torch.stack([p.detach().flatten()[:65536].float().abs().median() for p in half]).median().item()
        resolution = torch.finfo(dtype).eps * typical / 2
        if learning_rate < resolution:
            print(f"warning: learning_rate {learning_rate:g} is below what {str(dtype).removeprefix('torch.')} "
                  f"weights can take: an update smaller than {resolution:.2g} (half the spacing of the numbers around "
                  f"the median |weight| {typical:.2g}) rounds away, so most weights will not move; keep float32 "
                  "master weights (--fp32_master_weights true, the default)", file=sys.stderr)
    return policy


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode, no gradients: the reference model."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def router_aux_loss_coef(model: nn.Module, coef: float | None) -> float:
    """The weight of a mixture-of-experts model's router load-balancing loss in the training loss, as TRL sets it.

    A model whose text config has ``output_router_logits`` returns the loss; ``coef`` ``None`` takes the config's
    ``router_aux_loss_coef`` (0 when it declares none), any other value is used as given (0 turns the term off).
    For another model the weight is 0, and a non-zero ``coef`` is a :class:`UserError`.
    """
    text_config = model.config.get_text_config()
    if not hasattr(text_config, "output_router_logits"):
        if coef:
            raise UserError(f"config key `router_aux_loss_coef`: {coef} given, but {type(model).__name__} is not a "
                            "mixture-of-experts model that returns router logits; leave it unset")
        return 0.0
    return float(getattr(text_config, "router_aux_loss_coef", 0.0) if coef is None else coef)


def generation_kwargs(model: nn.Module) -> dict:
    """Extra ``generate`` arguments: no router logits for a mixture-of-experts model whose config asks for them
    (with a cache, its load-balancing loss would be computed from one step's router logits and the whole
    attention mask, and fail)."""
    return {"output_router_logits": False} if hasattr(model.config.get_text_config(), "output_router_logits") else {}


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability to 0 (DPO's default, as in TRL)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def add_lora_adapters(model: nn.Module, r: int, alpha: int, dropout: float = 0.0,
                      target_modules: list[str] | None = None) -> nn.Module:
    """``model`` wrapped by PEFT with fresh LoRA adapters (only they train; the policy starts equal to the base)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:
        raise ImportError("config key `use_peft` needs the `peft` package: pip install peft") from error
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, task_type="CAUSAL_LM",
                        target_modules=target_modules or "all-linear")
    return get_peft_model(model, config)


def hide_shard_writing_bars() -> None:
    """Hide transformers' "Writing model shards" bar, which every checkpoint and the final save draw into the
    training bar; the training bar and download bars stay (each command calls this before it loads a model)."""
    from transformers.utils import logging as hf_logging

    def hook(factory, args, kwargs):
        if kwargs.get("desc") == "Writing model shards":
            kwargs = {**kwargs, "disable": True}
        return factory(*args, **kwargs)

    hf_logging.set_tqdm_hook(hook)


def config_context(text_config) -> int | None:
    """The number of positions a model's text config was built for (``max_position_embeddings`` or
    ``n_positions``), or ``None`` when it states none (BLOOM)."""
    for key in ("max_position_embeddings", "n_positions"):
        if isinstance(getattr(text_config, key, None), int):
            return getattr(text_config, key)
    return None


def model_context(model_path: str) -> int | None:
    """:func:`config_context` of the model at ``model_path``."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_path).get_text_config()
    except LOAD_ERRORS as error:
        raise not_loadable(model_path, "config", error) from error
    return config_context(config)
