"""The token-weighted preference trainer: a ``transformers.Trainer`` whose ``compute_loss`` wires the pieces.

One step (see DESIGN.md): weights from the scheme (before the forward, or after it from the policy's hidden
states or log-probs) → policy per-token log-probs → reference per-token log-probs (no grad; none for a
reference-free scheme) → pair loss (+ scheme extras).
Everything else — accelerate, DDP/FSDP/DeepSpeed, gradient accumulation, checkpointing, logging backends — is
``transformers.Trainer``'s.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch
from torch import nn
from accelerate.utils import extract_model_from_parallel
from transformers import Trainer
from transformers.trainer import rotate_checkpoints
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from tokenweight.checkpoints import seal_checkpoint
from tokenweight.config import TokenweightConfig, check_scheme_objective
from tokenweight.data import PreferenceCollator, with_pair_lengths
from tokenweight.errors import UserError
from tokenweight.fsdp import enable_fsdp_on_cpu, end_reference_step, init_root, shard_reference
from tokenweight.head import output_head
from tokenweight.logps import TokenScores, enable_token_scoring, verify_padding_free
from tokenweight.metrics import Count, MetricValue, record_metrics, reduce_metrics
from tokenweight.models import disable_dropout, freeze, router_aux_loss_coef
from tokenweight.objectives import (completion_statistics, pair_loss, pair_sides, weight_statistics,
                                    wpo_pair_weights)
from tokenweight.weights import LossContext, batch_inputs, build_scheme, weigh_batch


class TokenweightTrainer(Trainer):
    """Train ``model`` against the frozen ``ref_model`` with the scheme named by ``args.weighting``;
    ``ref_model=None`` for a reference-free scheme (``uses_reference = False``: SimPO, ConfPO), which is then given
    no reference log-probs at all.

    ``train_dataset`` / ``eval_dataset`` are tokenized preference datasets
    (:func:`tokenweight.data.tokenize_preference_dataset`).
    """

    def __init__(self, model: nn.Module, ref_model: nn.Module | None, args: TokenweightConfig, train_dataset=None,
                 eval_dataset=None, processing_class=None, data_collator=None, **kwargs):
        scheme = build_scheme(args.weighting, args)
        if ref_model is not None:
            check_scheme_objective(scheme, given=("trainer ref_model",))
        if ref_model is model:
            raise ValueError("TokenweightTrainer needs a separate frozen reference model (ref_model)")
        if data_collator is None:
            if processing_class is None:
                raise ValueError("give processing_class (the tokenizer) or a data_collator")
            data_collator = PreferenceCollator(pad_token_id=processing_class.pad_token_id)
        if args.disable_dropout:
            disable_dropout(model)
        enable_token_scoring(model, args.head_tiling)
        aux_loss_coef = router_aux_loss_coef(model, args.router_aux_loss_coef)
        if args.padding_free:
            if aux_loss_coef != 0:
                raise UserError("--padding_free with a mixture-of-experts router loss is not supported (the router "
                                "loss would count the packs' unused slots); set --router_aux_loss_coef 0 or "
                                "--padding_free false")
            verify_padding_free(model)
        if ref_model is not None:
            if args.disable_dropout:
                disable_dropout(ref_model)
            enable_token_scoring(freeze(ref_model), args.head_tiling)
        if args.precompute_ref_log_probs or args.ref_log_probs:
            train_dataset, eval_dataset = _with_reference_logps(ref_model, args, scheme, data_collator,
                                                                train_dataset, eval_dataset)
            ref_model = None  # no longer needed: free its memory
        elif ref_model is None and scheme.uses_reference:
            raise ValueError("TokenweightTrainer needs a frozen reference model (ref_model), unless "
                             "precompute_ref_log_probs=True and the datasets carry the reference log-probs")
        if args.train_sampling_strategy == "group_by_length" and train_dataset is not None:
            train_dataset = with_pair_lengths(train_dataset, args.length_column_name)
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, data_collator=data_collator, **kwargs)
        # Our loss is a mean over the micro-batch: let the Trainer scale it for gradient accumulation.
        self.model_accepts_loss_kwargs = False
        self.scheme = scheme
        self.beta = args.effective_beta
        self.router_aux_loss_coef = aux_loss_coef
        self.ref_model = None if ref_model is None else self._prepare_reference(ref_model)
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._step_rows: tuple[int, list[torch.Tensor]] = (-1, [])  # (global step, row_index of its micro-batches)
        #: The run's settings and data record sealed into every checkpoint (:func:`tokenweight.run_record.run_record`;
        #: ``tokenweight train`` sets it), checked when a run resumes from one.
        self.run_record: dict | None = None

    def create_accelerator_and_postprocess(self):
        """The Trainer's accelerator; a multi-process CPU run that asked for FSDP v2 gets FSDP, not accelerate's
        silent DDP (:func:`tokenweight.fsdp.enable_fsdp_on_cpu`)."""
        super().create_accelerator_and_postprocess()
        if enable_fsdp_on_cpu(self.accelerator, self.args.fsdp_plugin_args):
            self.is_fsdp_enabled = True

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, then sealed (:func:`tokenweight.checkpoints.seal_checkpoint`) once every
        process has written its part; older checkpoints are rotated out (``save_total_limit``) only after the seal,
        so a save killed half way never leaves fewer complete checkpoints than before."""
        limit = self.args.save_total_limit
        self.args.save_total_limit = None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            run_dir = self._get_output_dir(trial=trial)
            seal_checkpoint(Path(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"), self.run_record)
            rotate_checkpoints(output_dir=run_dir, save_total_limit=limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def _prepare_reference(self, ref_model: nn.Module) -> nn.Module:
        """DeepSpeed: an inference engine with the run's ZeRO stage (ZeRO-3 partitions the reference too).
        FSDP (v2): sharded in place with the policy's plan, no optimizer (:func:`tokenweight.fsdp.shard_reference`).
        DDP: a full frozen copy on each process's device (it needs no gradient synchronisation)."""
        if self.is_deepspeed_enabled:
            return _deepspeed_inference_engine(ref_model, self.accelerator.state.deepspeed_plugin.deepspeed_config,
                                               self.args)
        if self.is_fsdp_enabled:
            return shard_reference(ref_model, self.accelerator)
        return ref_model.to(self.accelerator.device)

    # ------------------------------------------------------------------------------------------ the loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        if mode == "train":
            self._remember_step_rows(inputs)
        scheme = self.scheme
        if self.is_fsdp_enabled:
            init_root(model)  # before a scheme's own passes call its sub-units
        step = self.state.global_step if model.training else None
        weighting_inputs = batch_inputs(inputs, model, step=step)
        loss_mask = weighting_inputs.loss_mask

        ref_logps = ref_hidden = kl_reference = None  # a reference-free scheme has no reference scores at all
        if scheme.uses_reference:
            ref = self._reference_scores(inputs, loss_mask, scheme.needs_hidden_for_loss)
            ref_logps, ref_hidden = ref.token_logps, ref.hidden
        if ref_hidden is not None:  # the KL to the reference (TDPO, TI-DPO) shares the policy's head tiles
            kl_reference = (ref_hidden, output_head(extract_model_from_parallel(self.ref_model)))

        def forward(return_hidden: bool):
            return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], score_tokens=True,
                         score_mask=loss_mask, return_hidden=return_hidden, return_stats=True,
                         padding_free=self.args.padding_free, router_aux_loss=self.router_aux_loss_coef != 0,
                         kl_reference=kl_reference)

        token_weights, policy = weigh_batch(scheme, weighting_inputs, forward)
        weights = token_weights.weights
        context = LossContext(model=model, ref_model=self.ref_model, inputs=weighting_inputs,
                              policy_logps=policy.token_logps, ref_logps=ref_logps, weights=weights,
                              policy_hidden=policy.hidden, ref_hidden=ref_hidden, step=step,
                              policy_kl=policy.token_kl)
        metrics = dict(token_weights.metrics)
        offset = scheme.margin_offset(context)
        if offset is not None:
            offset, offset_metrics = offset
            metrics.update(offset_metrics)
        pair_weights = token_weights.pair_weights
        if self.args.use_weighting:
            wpo = wpo_pair_weights(policy.token_logps, policy.stats.log_sum_sq_probs, loss_mask, self.args.wpo_clamp)
            metrics["wpo/pair_weight"] = wpo.mean()
            pair_weights = wpo if pair_weights is None else pair_weights * wpo
        chosen, rejected = pair_sides(policy.token_logps, weights, loss_mask, ref_logps, token_weights.ref_weights)
        result = pair_loss(chosen, rejected, self.beta, self.args.loss_type, self.args.label_smoothing,
                           offset=offset, pair_weights=pair_weights)
        loss = result.loss
        extra = scheme.extra_loss(context)
        if extra is not None:
            extra_loss, extra_metrics = extra
            loss = loss + extra_loss
            metrics.update(extra_metrics)
        if policy.aux_loss is not None:  # mixture of experts: the router's load balancing, as TRL adds it
            loss = loss + self.router_aux_loss_coef * policy.aux_loss
            metrics["aux_loss"] = policy.aux_loss
        if not torch.isfinite(loss):
            rows = inputs.get("row_index")
            raise FloatingPointError(f"non-finite loss ({loss.item()}) with weighting={scheme.name!r} on dataset "
                                     f"rows {rows.tolist() if rows is not None else '?'}")
        metrics.update(result.metrics)
        metrics.update(weight_statistics(weights, loss_mask))
        metrics.update(completion_statistics(policy.stats, loss_mask))
        if mode == "train":
            metrics["num_tokens"] = Count(inputs["attention_mask"].sum())
        self._record(mode, metrics)
        return (loss, {"per_pair": result.per_pair.detach()}) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._end_reference_step()
        return loss

    def _end_reference_step(self) -> None:
        """After the micro-step's last use of the reference (the backward may recompute checkpointed reference head
        chunks, TI-DPO's KL): under FSDP free every reference unit still gathered
        (:func:`tokenweight.fsdp.end_reference_step`)."""
        if self.is_fsdp_enabled and self.ref_model is not None:
            end_reference_step(self.ref_model)

    def _remember_step_rows(self, inputs: dict) -> None:
        """Keep the dataset rows of the current optimizer step's micro-batches (named by a non-finite gradient)."""
        step, rows = self._step_rows
        if step != self.state.global_step:
            step, rows = self.state.global_step, []
        if "row_index" in inputs:
            rows = rows + [inputs["row_index"]]  # tensors: read on the host only if the step fails
        self._step_rows = (step, rows)

    def _get_grad_norm(self, model, grad_norm=None):
        """The Trainer's gradient norm, checked before the optimizer step: a non-finite gradient (a finite but huge
        loss can overflow it) raises :class:`FloatingPointError` naming the step's rows instead of updating."""
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if grad_norm is not None and not torch.isfinite(torch.as_tensor(grad_norm)):
            raise FloatingPointError(f"non-finite gradient norm ({float(grad_norm)}) with weighting="
                                     f"{self.scheme.name!r} on dataset rows {[int(r) for rows in self._step_rows[1] for r in rows]}")
        return grad_norm

    def _reference_scores(self, inputs: dict, loss_mask: torch.Tensor, return_hidden: bool) -> TokenScores:
        """The reference's per-token log-probs ``[2B, L-1]`` on the completion positions ``loss_mask``: precomputed in
        the batch, or a no-grad forward."""
        if "ref_token_logps" in inputs:
            return TokenScores(token_logps=inputs["ref_token_logps"].float())
        if self.ref_model is None:
            raise ValueError(f"batch of dataset rows {inputs['row_index'].tolist()} carries no precomputed reference "
                             "log-probs and the trainer has no reference model")
        with torch.no_grad():
            return self.ref_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                  score_tokens=True, score_mask=loss_mask, return_hidden=return_hidden,
                                  padding_free=self.args.padding_free)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        self._end_reference_step()
        return loss.detach(), None, None

    # ------------------------------------------------------------------------------------------ metrics

    def _record(self, mode: str, metrics: dict[str, MetricValue]) -> None:
        """Keep one micro-step's ``metrics`` (tensors stay on the device: no host sync) until the next ``log``."""
        record_metrics(self._metrics[mode], metrics)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the metrics recorded since the last log, reduced over processes and micro-steps
        (:func:`tokenweight.metrics.reduce_metrics`: means averaged, counts summed); ``num_tokens`` is the
        running total of training tokens (prompt and completions, every process), continued from ``log_history``
        after a resume."""
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        values = reduce_metrics(self._metrics[mode], self.accelerator.device,
                                lambda flat: self.accelerator.reduce(flat, reduction="sum"),
                                self.accelerator.num_processes)
        self._metrics[mode].clear()
        if "num_tokens" in values:
            values["num_tokens"] = int(round(values["num_tokens"])) + self._logged_num_tokens()
        for name, value in values.items():
            logs[prefix + name] = value
        super().log(logs, start_time)

    def _logged_num_tokens(self) -> int:
        """``num_tokens`` of the last training log (``log_history`` is restored on resume), 0 before the first."""
        return next((entry["num_tokens"] for entry in reversed(self.state.log_history) if "num_tokens" in entry), 0)


def _with_reference_logps(ref_model, args: TokenweightConfig, scheme, collator, train_dataset, eval_dataset):
    """Train and eval datasets carrying ``chosen_ref_logps``/``rejected_ref_logps`` (computed where missing)."""
    from tokenweight.reference import precompute_reference_logps

    if scheme.needs_hidden_for_loss:
        raise ValueError(f"precomputed reference log-probs (precompute_ref_log_probs, ref_log_probs) cannot serve "
                         f"weighting={scheme.name!r}: its loss needs the reference's hidden states at every step "
                         "(TI-DPO: set tidpo_kl_alpha=0 to drop the KL term)")
    datasets_out = []
    for name, dataset in (("train", train_dataset), ("eval", eval_dataset)):
        if dataset is not None and "chosen_ref_logps" not in dataset.column_names:
            if ref_model is None:
                raise ValueError(f"precompute_ref_log_probs=True: the {name} dataset has no reference log-probs and "
                                 "no reference model was given to compute them (with ref_log_probs, attach them "
                                 "with tokenweight.reference_cache.with_cached_reference_logps)")
            dataset = precompute_reference_logps(ref_model.to(args.device), dataset, collator.pad_token_id,
                                                 args.precompute_ref_batch_size or args.per_device_eval_batch_size,
                                                 name=name, padding_free=args.padding_free)
        datasets_out.append(dataset)
    return tuple(datasets_out)


def _deepspeed_inference_engine(model: nn.Module, train_config: dict, args: TokenweightConfig) -> nn.Module:
    """Wrap the frozen ``model`` in a DeepSpeed engine without optimizer, keeping ZeRO-3 partitioning when the
    training run uses it (other stages: no partitioning is needed for a model without optimizer state)."""
    import copy

    import deepspeed

    config = copy.deepcopy(train_config)
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    zero = config.setdefault("zero_optimization", {})
    if zero.get("stage") != 3:
        zero["stage"] = 0
    config["train_micro_batch_size_per_gpu"] = args.per_device_train_batch_size
    config["gradient_accumulation_steps"] = args.gradient_accumulation_steps
    config.pop("train_batch_size", None)
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine
