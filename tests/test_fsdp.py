"""The FSDP settings tokenweight refuses, with the reason in one line (the working paths are trained and checked in
``tests/test_distributed.py``, which needs several processes)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from accelerate.utils import DistributedType

from tokenweight.errors import UserError
from tokenweight.fsdp import enable_fsdp_on_cpu, shard_reference


def test_fsdp_v1_on_cpu_processes_is_refused_not_run_as_ddp():
    cpu_processes = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, mixed_precision="no")
    with pytest.raises(UserError, match="FSDP v1 cannot run on CPU processes.*fsdp_version: 2"):
        enable_fsdp_on_cpu(cpu_processes, {"fsdp_version": 1})


def test_without_an_fsdp_request_the_state_is_left_alone(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    cpu_processes = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, mixed_precision="no")
    assert enable_fsdp_on_cpu(cpu_processes, None) is False
    gpus = SimpleNamespace(distributed_type=DistributedType.MULTI_GPU, mixed_precision="no")
    assert enable_fsdp_on_cpu(gpus, {"fsdp_version": 2}) is False


def test_a_reference_under_fsdp_v1_is_refused_naming_the_ways_out():
    from conftest import make_model
    fsdp_v1 = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=SimpleNamespace(fsdp_version=1)))
    with pytest.raises(UserError, match="needs FSDP v2.*ZeRO-3.*--ref_log_probs"):
        shard_reference(make_model(16), fsdp_v1)
