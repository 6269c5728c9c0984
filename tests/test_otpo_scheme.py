"""The ``otpo`` weighting scheme: packing the completion states, weighting the pairs, scattering back."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from tokenweight.weights.otpo import otpo_weights
from tokenweight.weights.base import SCHEMES, WeightingInputs, check_weights
from tokenweight.masks import pack_left
from tokenweight.metrics import Count
from tokenweight.weights.otpo import OTPOScheme, OTPOSettings

PROMPTS = [4, 2, 6]          # prompt tokens per pair (shared by chosen and rejected)
CHOSEN = [9, 14, 3]          # chosen completion tokens
REJECTED = [12, 5, 8]        # rejected completion tokens
HIDDEN = 16


def make_inputs(seed=0):
    """A hand-built batch: ``hidden [2B, L-1, d]`` and ``loss_mask`` False on prompt and padding positions.

    With the shifted alignment, the completion of a row with prompt length ``p`` and ``n`` completion tokens
    occupies shifted positions ``[p - 1, p - 1 + n)``.
    """
    pairs = len(PROMPTS)
    length = max(p + max(c, r) for p, c, r in zip(PROMPTS, CHOSEN, REJECTED)) + 2
    generator = torch.Generator().manual_seed(seed)
    hidden = 5.0 * torch.randn(1, 1, HIDDEN, generator=generator) + torch.randn(2 * pairs, length - 1, HIDDEN,
                                                                                 generator=generator)
    loss_mask = torch.zeros(2 * pairs, length - 1, dtype=torch.bool)
    for b, (prompt, n_c, n_r) in enumerate(zip(PROMPTS, CHOSEN, REJECTED)):
        loss_mask[b, prompt - 1:prompt - 1 + n_c] = True
        loss_mask[pairs + b, prompt - 1:prompt - 1 + n_r] = True
    input_ids = torch.zeros(2 * pairs, length, dtype=torch.long)
    completion_mask = torch.cat([torch.zeros(2 * pairs, 1, dtype=torch.long), loss_mask.long()], dim=1)
    return WeightingInputs(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                           completion_mask=completion_mask, loss_mask=loss_mask, batch={}, hidden=hidden)


def direct_weights(inputs, reg, reg_m):
    """otpo_weights(log=True) on rows gathered one by one (a Python loop), scattered back by hand."""
    pairs = len(PROMPTS)
    mask, hidden = inputs.loss_mask, inputs.hidden
    n, m = max(CHOSEN), max(REJECTED)
    chosen = torch.zeros(pairs, n, HIDDEN)
    rejected = torch.zeros(pairs, m, HIDDEN)
    chosen_mask = torch.zeros(pairs, n, dtype=torch.bool)
    rejected_mask = torch.zeros(pairs, m, dtype=torch.bool)
    for b in range(pairs):
        chosen[b, :CHOSEN[b]] = hidden[b][mask[b]]
        rejected[b, :REJECTED[b]] = hidden[pairs + b][mask[pairs + b]]
        chosen_mask[b, :CHOSEN[b]] = True
        rejected_mask[b, :REJECTED[b]] = True
    w_c, w_r, stats = otpo_weights(chosen, rejected, chosen_mask, rejected_mask, reg=reg, reg_m=reg_m, log=True)
    expected = torch.zeros(mask.shape)
    for b in range(pairs):
        expected[b][mask[b]] = w_c[b, :CHOSEN[b]]
        expected[pairs + b][mask[pairs + b]] = w_r[b, :REJECTED[b]]
    return expected, stats


@pytest.mark.parametrize("args, reg, reg_m", [
    (None, 1.0, 0.2),
    (OTPOSettings(otpo_reg=0.1, otpo_reg_m=[0.2, 0.5]), 0.1, [0.2, 0.5]),
])
def test_scheme_equals_direct_call(args, reg, reg_m):
    inputs = make_inputs()
    scheme = OTPOScheme(args)
    out = scheme.compute(inputs)
    expected, stats = direct_weights(inputs, reg, reg_m)
    torch.testing.assert_close(out.weights, expected, rtol=1e-6, atol=0)
    assert (out.weights[~inputs.loss_mask] == 0).all()
    check_weights(out.weights, inputs.loss_mask, scheme.name)
    budgets = torch.tensor([min(c, r) for c, r in zip(CHOSEN, REJECTED)], dtype=torch.float32)
    torch.testing.assert_close(out.weights[:3].sum(1), budgets, rtol=1e-5, atol=0)
    torch.testing.assert_close(out.weights[3:].sum(1), budgets, rtol=1e-5, atol=0)
    assert set(out.metrics) == {"otpo/mass_scale", "otpo/iterations", "otpo/unconverged_pairs"}
    assert out.metrics["otpo/iterations"] == stats["iterations"].double().mean().item()
    assert out.metrics["otpo/iterations"] == (11.0 if args is None else 31.0)  # POT: 11 at (1, 0.2)
    assert float(out.metrics["otpo/mass_scale"]) == pytest.approx(stats["mass_scale"].mean().item(), rel=1e-6)
    assert out.metrics["otpo/unconverged_pairs"] == Count(0.0)


def test_scheme_is_registered_and_needs_hidden_states():
    assert SCHEMES["otpo"] is OTPOScheme and OTPOScheme.needs_hidden_states
    inputs = make_inputs()
    inputs.hidden = None
    with pytest.raises(ValueError, match="hidden states"):
        OTPOScheme().compute(inputs)


def test_nan_state_outside_the_completion_is_ignored_and_inside_names_the_row():
    inputs = make_inputs(seed=1)
    inputs.hidden[0, 0] = float("nan")  # a prompt position of pair 0
    OTPOScheme().compute(inputs)
    inputs.hidden[4, PROMPTS[1]] = float("nan")  # a completion position of the rejected row of pair 1
    with pytest.raises(ValueError, match=r"non-finite rejected hidden state in batch rows \[1\]"):
        OTPOScheme().compute(inputs)


def test_pack_left():
    mask = torch.tensor([[False, True, False, True, True], [True, False, False, False, False]])
    hidden = torch.arange(10.0).reshape(2, 5, 1)
    packed, packed_mask, order = pack_left(hidden, mask)
    assert packed[0, :, 0].tolist() == [1.0, 3.0, 4.0] and packed[1, 0, 0].item() == 5.0
    assert packed_mask.tolist() == [[True, True, True], [True, False, False]]
    assert order[0].tolist() == [1, 3, 4] and order[1, 0].item() == 0


def test_one_host_read_per_step_plus_one_per_convergence_check(monkeypatch):
    spec = importlib.util.spec_from_file_location("otpo_solver", Path(__file__).parents[1] / "benchmarks/otpo_solver.py")
    benchmark = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, benchmark)  # its dataclass looks its module up
    spec.loader.exec_module(benchmark)
    inputs = make_inputs()
    for args, reg, reg_m in ((None, 1.0, 0.2), (OTPOSettings(otpo_reg=0.1, otpo_reg_m=[0.2, 0.5]), 0.1, [0.2, 0.5])):
        with benchmark.count_host_reads() as reads:
            OTPOScheme(args).compute(inputs)
        longest = int(direct_weights(inputs, reg, reg_m)[1]["iterations"].max())  # the loop runs this long
        checks = (longest - 1) // 10 + 1  # POT checks at iterations 0, 10, 20, …
        assert reads[0] == 1 + checks, (reg, longest)
