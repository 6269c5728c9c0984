"""FSDP2 (torch ``fully_shard``) through accelerate: on CPU processes too, with the frozen reference sharded like
the policy.

**CPU processes.** accelerate 1.15 turns FSDP on only for accelerator device types: in ``AcceleratorState.__init__``
the ``ACCELERATE_USE_FSDP`` / ``fsdp_plugin`` branch sits under ``distributed_type in [MULTI_GPU, MULTI_NPU,
MULTI_XPU, ...]``, which does not hold ``MULTI_CPU``, so a CPU run launched with an FSDP config is silently wrapped in
DDP. torch's FSDP2 itself runs on a CPU device mesh over gloo, and accelerate's FSDP2 code path
(``Accelerator.prepare`` → ``fsdp2_prepare_model`` → ``fully_shard``) has nothing CUDA-specific, so
:func:`enable_fsdp_on_cpu` switches the state to FSDP (the step accelerate skips) when the run asked for FSDP v2.
FSDP v1 on CPU fails inside accelerate (it passes ``device_id=cpu:<rank>``, which FSDP1 rejects as inconsistent
with the compute device ``cpu``), so it is refused with a :class:`~tokenweight.errors.UserError`.

**The reference.** :func:`shard_reference` wraps the frozen reference with accelerate's own FSDP2 plan for the
policy (``fsdp2_prepare_model``: ``fully_shard`` on the configured decoder-layer classes, the input embedding, the
final norm + output head, then the root; the same mixed-precision and offload policies, the same device mesh). It has
no optimizer, so it holds only its parameter shards: ``1/N`` of the model per process.
"""

from __future__ import annotations

import os

from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, fsdp2_prepare_model
from torch import nn
from torch.distributed.fsdp import FSDPModule

from tokenweight.errors import UserError


def requested_fsdp_plugin(fsdp_plugin_args: dict | None) -> FullyShardedDataParallelPlugin | None:
    """The FSDP plugin the run asked for: from ``TrainingArguments``' ``fsdp``/``fsdp_config`` (their
    ``fsdp_plugin_args``), else from ``accelerate launch``'s FSDP config (``ACCELERATE_USE_FSDP`` and the ``FSDP_*``
    environment), else ``None``."""
    if fsdp_plugin_args is not None:
        return FullyShardedDataParallelPlugin(**fsdp_plugin_args)
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return FullyShardedDataParallelPlugin()
    return None


def enable_fsdp_on_cpu(accelerator: Accelerator, fsdp_plugin_args: dict | None) -> bool:
    """Switch a multi-process CPU accelerate state to FSDP when the run asked for FSDP (see the module docstring);
    True when switched. Call right after the ``Accelerator`` is created, before anything is prepared.

    Raises :class:`UserError` for FSDP v1, which cannot run on CPU processes.
    """
    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        return False
    plugin = requested_fsdp_plugin(fsdp_plugin_args)
    if plugin is None:
        return False
    if plugin.fsdp_version != 2:
        raise UserError(f"FSDP v{plugin.fsdp_version} cannot run on CPU processes (accelerate gives FSDP v1 "
                        f"device_id cpu:<rank>, which it rejects); set fsdp_version: 2 (accelerate launch "
                        "--fsdp_version 2, or fsdp_config version 2)")
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    # accelerate's states share their attributes through class-level dicts; AcceleratorState() copies
    # PartialState's into its own on every construction, so both must say FSDP (as on GPUs).
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["fsdp_plugin"] = plugin
    return True


def shard_reference(model: nn.Module, accelerator: Accelerator) -> nn.Module:
    """The frozen reference ``model`` sharded in place with the policy's FSDP2 plan (module docstring).

    Raises :class:`UserError` under FSDP v1, whose wrapper accelerate applies only to the one model it prepares.
    """
    plugin = accelerator.state.fsdp_plugin
    if plugin.fsdp_version != 2:
        raise UserError("a sharded reference model needs FSDP v2 (fsdp_version: 2 in the accelerate config, or "
                        "accelerate launch --fsdp_version 2); under FSDP v1 use DeepSpeed ZeRO-3, or train "
                        "with --ref_log_probs DIR (no reference model at all)")
    if any(parameter.requires_grad for parameter in model.parameters()):
        raise ValueError("shard_reference: the reference model must be frozen (tokenweight.models.freeze)")
    model = fsdp2_prepare_model(accelerator, model)
    init_root(model)
    return model


def init_root(model: nn.Module) -> None:
    """Make the FSDP2 model ``model`` the root of its units (idempotent; a no-op for other models).

    FSDP2 takes as root the first unit that runs a forward. Scheme passes call the input embedding, the decoder
    stack or the output head on their own (TI-DPO's attribution before the policy's first forward, anchor scoring,
    the TDPO2 KL), which would make a sub-unit the root and then fail ("FSDP requires a single root module").
    This runs FSDP2's lazy initialisation from the model itself, as its first forward would.
    """
    if isinstance(model, FSDPModule):
        model._get_fsdp_state()._lazy_init()


def end_reference_step(model: nn.Module) -> None:
    """Free every gathered unit of the FSDP2 reference ``model`` at the end of a step (a no-op for other models).

    FSDP2 keeps the units with ``reshard_after_forward=False`` (final norm + output head, root) gathered after a
    forward until their backward, and a grouped unit whose modules ran only partly (TI-DPO's standalone head calls:
    the TDPO2 KL, anchor scoring) stays in its forward state, which a plain ``reshard()`` skips. A frozen reference
    has no backward, so its step ends here: ``reset_iter_state()`` reshards every unit and clears FSDP's
    per-iteration records (its post-forward order would otherwise grow by one entry per unit and forward). It
    discards only in-flight gradient reductions, and the reference has none.
    """
    if isinstance(model, FSDPModule):
        model.reset_iter_state()


def reshard(model: nn.Module) -> None:
    """Free the gathered full parameters of every FSDP2 unit of ``model`` (a no-op for units already sharded).

    FSDP2 keeps units with ``reshard_after_forward=False`` (the output head and the root, in accelerate's plan)
    gathered after the forward until their backward; a frozen reference has no backward, so the trainer calls this
    after the reference's last use in a step."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
