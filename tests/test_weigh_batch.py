"""``weigh_batch`` (issue 11, item 4): the one way the trainer and evaluation weigh a batch — weights before the
policy forward, or after it from its detached hidden states — detached and checked."""

from __future__ import annotations

import pytest
import torch

from tokenweight.logps import TokenScores
from tokenweight.weights import TokenWeights, WeightingScheme, batch_inputs, weigh_batch


def batch() -> dict[str, torch.Tensor]:
    completion = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 1, 1, 0], [0, 1, 1, 1, 1], [0, 0, 0, 1, 1]])
    return {"input_ids": torch.arange(20).view(4, 5), "attention_mask": torch.ones(4, 5, dtype=torch.long),
            "completion_mask": completion, "loss_mask": completion[:, 1:].bool()}  # as the collator shifts it


class Recording(WeightingScheme):
    """Weights ``2 · hidden[..., 0]`` (with hidden states) or 3 on the completion, recording the call order."""

    name = "recording"

    def __init__(self, events: list, grad: bool = False, spill: bool = False):
        super().__init__()
        self.events, self.grad, self.spill = events, grad, spill

    def compute(self, inputs):
        self.events.append("compute")
        if self.needs_hidden_states:
            weights = 2 * inputs.hidden[..., 0] * inputs.loss_mask
        else:
            weights = torch.full(inputs.loss_mask.shape, 3.0, requires_grad=self.grad) * inputs.loss_mask
        if self.spill:
            weights = weights + 1.0
        return TokenWeights(weights=weights, metrics={"recording/calls": 1.0})


class RecordingHidden(Recording):
    needs_hidden_states = True


def forward_recording(events: list, shape: tuple[int, int]):
    hidden = torch.rand(*shape, 4, requires_grad=True)

    def forward(return_hidden: bool) -> TokenScores:
        events.append(f"forward(hidden={return_hidden})")
        return TokenScores(token_logps=torch.zeros(shape), hidden=hidden if return_hidden else None)
    return forward, hidden


@pytest.mark.parametrize("scheme", [Recording, RecordingHidden])
def test_weights_come_before_or_after_the_forward_detached(scheme):
    needs_hidden = scheme.needs_hidden_states
    events: list = []
    inputs = batch_inputs(batch(), model=None)
    assert torch.equal(inputs.loss_mask, batch()["completion_mask"][:, 1:].bool())
    forward, hidden = forward_recording(events, tuple(inputs.loss_mask.shape))
    token_weights, policy = weigh_batch(scheme(events, grad=True), inputs, forward)
    if needs_hidden:
        assert events == ["forward(hidden=True)", "compute"]
        assert torch.equal(token_weights.weights, (2 * hidden[..., 0] * inputs.loss_mask).detach())
        assert not inputs.hidden.requires_grad and policy.hidden is hidden  # the loss keeps the graph
    else:
        assert events == ["compute", "forward(hidden=False)"]
        assert torch.equal(token_weights.weights, 3.0 * inputs.loss_mask)
    assert not token_weights.weights.requires_grad
    assert token_weights.metrics == {"recording/calls": 1.0}


def test_weights_outside_the_completion_are_refused():
    events: list = []
    inputs = batch_inputs(batch(), model=None)
    forward, _ = forward_recording(events, tuple(inputs.loss_mask.shape))
    with pytest.raises(ValueError, match="scheme 'recording' put weight outside the completion tokens"):
        weigh_batch(Recording(events, spill=True), inputs, forward)


class RecordingLogps(WeightingScheme):
    """Weights ``−policy_logps`` on the completion, from the forward's own token log-probs (as ConfPO weighs)."""

    name = "recording-logps"
    needs_policy_logps = True

    def __init__(self, events: list):
        super().__init__()
        self.events = events

    def compute(self, inputs):
        self.events.append("compute")
        assert inputs.hidden is None  # hidden states only for schemes that ask for them
        return TokenWeights(weights=-inputs.policy_logps * inputs.loss_mask)


def test_a_scheme_needing_policy_logps_weighs_after_the_forward_from_its_detached_logps():
    events: list = []
    inputs = batch_inputs(batch(), model=None)
    logps = -torch.rand(inputs.loss_mask.shape, requires_grad=True)

    def forward(return_hidden: bool) -> TokenScores:
        events.append(f"forward(hidden={return_hidden})")
        return TokenScores(token_logps=logps)

    token_weights, policy = weigh_batch(RecordingLogps(events), inputs, forward)
    assert events == ["forward(hidden=False)", "compute"]
    assert torch.equal(token_weights.weights, (-logps * inputs.loss_mask).detach())
    assert not inputs.policy_logps.requires_grad and policy.token_logps is logps  # the loss keeps the graph
