"""The token-tiled, completion-only head against the naive ``log_softmax`` + ``gather`` over full logits: values and
gradients (w.r.t. hidden states, head weight and bias), tilings that divide neither the token count nor the
vocabulary, Gemma2's final-logit softcapping, every per-token statistic (entropy, mean logit, top-1, log Σp²) against
the same full logits, the bound on the tile size, the score mask, and the patched model forward."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model
from torch import nn

from tokenweight.head import OutputHead, output_head
from tokenweight.logps import enable_token_scoring, logps_from_hidden, naive_token_logps, scores_from_hidden
from tokenweight.tiled_head import Tiling

TOL = 1e-6
TILINGS = [Tiling(4, 7), Tiling(5, 50), Tiling(12, 16), Tiling(64, 64), Tiling(1, 1)]


def max_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """Max abs difference, relative to the reference's largest magnitude when that exceeds 1 (fp32 sums of many
    terms differ in the last bits with the summation order)."""
    return (ours - reference).abs().max().item() / max(1.0, reference.abs().max().item())


def naive_logps_from_hidden(hidden: torch.Tensor, labels: torch.Tensor, head: OutputHead) -> torch.Tensor:
    """``[N, T]`` log-probs through full ``[N, T, V]`` logits."""
    return torch.log_softmax(head.logits(hidden), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def random_inputs(seed: int, rows: int = 3, length: int = 12, dim: int = 16, vocab: int = 50, bias: bool = True):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, length, dim, generator=generator)
    labels = torch.randint(0, vocab, (rows, length), generator=generator)
    torch.manual_seed(seed)
    head = nn.Linear(dim, vocab, bias=bias)
    return hidden, labels, head


def values_and_grads(function, hidden, labels, head: OutputHead, upstream):
    """Log-probs of ``function`` and the gradients of ``Σ upstream · logps`` w.r.t. hidden, head weight and bias."""
    hidden = hidden.clone().requires_grad_()
    head.module.zero_grad()
    logps = function(hidden, labels, head)
    (logps * upstream).sum().backward()
    return logps.detach(), hidden.grad, head.module.weight.grad.clone(), head.module.bias.grad.clone()


@pytest.mark.parametrize("tiling", TILINGS, ids=str)
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_tiled_head_matches_naive(tiling, softcap):
    hidden, labels, linear = random_inputs(seed=tiling.tokens)
    head = OutputHead(module=linear, logit_scale=1.5, softcap=softcap)
    upstream = torch.randn(labels.shape, generator=torch.Generator().manual_seed(99))
    tiled = values_and_grads(lambda h, y, o: logps_from_hidden(h, y, o, tiling), hidden, labels, head, upstream)
    naive = values_and_grads(naive_logps_from_hidden, hidden, labels, head, upstream)
    for ours, reference, what in zip(tiled, naive, ("values", "d hidden", "d head weight", "d head bias")):
        assert max_error(ours, reference) < TOL, what


def naive_stats(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Entropy, mean logit, top-1 and log Σ p² ``[N, T]`` from full ``[N, T, V]`` logits, by their textbook
    formulas."""
    logits = logits.double()
    logp = torch.log_softmax(logits, dim=-1)
    entropy = -(logp.exp() * logp).sum(dim=-1)
    return (entropy, logits.sum(dim=-1) / logits.shape[-1], logits.argmax(dim=-1) == labels,
            torch.logsumexp(2 * logp, dim=-1))


@pytest.mark.parametrize("tiling", TILINGS, ids=str)
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_tiled_stats_match_full_logits_and_leave_gradients_unchanged(tiling, softcap):
    hidden, labels, linear = random_inputs(seed=10 + tiling.tokens)
    head = OutputHead(module=linear, logit_scale=1.5, softcap=softcap)
    labels[0, :4] = head.logits(hidden[0, :4]).argmax(dim=-1)  # some labels are the top-1 token
    upstream = torch.randn(labels.shape, generator=torch.Generator().manual_seed(98))
    stats = {}

    def with_stats(h, y, o):
        logps, stats["value"], _ = scores_from_hidden(h, y, o, tiling, with_stats=True)
        return logps

    tiled = values_and_grads(with_stats, hidden, labels, head, upstream)
    naive = values_and_grads(naive_logps_from_hidden, hidden, labels, head, upstream)
    for ours, reference, what in zip(tiled, naive, ("values", "d hidden", "d head weight", "d head bias")):
        assert max_error(ours, reference) < TOL, what
    entropy, mean_logit, is_top1, log_sum_sq_probs = naive_stats(head.logits(hidden.detach()), labels)
    got = stats["value"]
    assert not got.entropy.requires_grad and got.entropy.shape == labels.shape
    assert max_error(got.entropy.double(), entropy) < TOL
    assert max_error(got.log_sum_sq_probs.double(), log_sum_sq_probs) < TOL
    assert max_error(got.mean_logit.double(), mean_logit) < TOL
    assert torch.equal(got.is_top1, is_top1)
    assert 4 <= int(is_top1.sum()) < is_top1.numel()  # both outcomes occur


def test_top1_ties_take_the_first_index_across_vocabulary_slices():
    """Two equal largest logits in different slices: the label at the first one is top-1, at the second it is not
    (``argmax``'s rule over the whole vocabulary)."""
    linear = nn.Linear(2, 6, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[0., 0.], [1., 0.], [0., 0.], [0., 0.], [1., 0.], [0., 0.]]))
    hidden = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    labels = torch.tensor([[1, 4]])
    _, stats, _ = scores_from_hidden(hidden, labels, OutputHead(linear), Tiling(1, 3), with_stats=True)
    assert stats.is_top1.tolist() == [[True, False]]


def test_only_masked_positions_reach_the_head_and_no_tile_exceeds_its_bound(monkeypatch):
    """Masked positions equal the unmasked head's values, the others are 0; the head sees only the masked
    positions, in tiles of at most tokens × vocabulary logits, whatever the number of rows."""
    hidden, labels, linear = random_inputs(seed=3, rows=6, length=20, vocab=50)
    head = OutputHead(linear)
    mask = torch.rand(labels.shape, generator=torch.Generator().manual_seed(4)) < 0.4
    shapes = []
    original = OutputHead.slice_logits

    def recording(self, h, start, stop, *tensors):
        logits = original(self, h, start, stop, *tensors)
        shapes.append(tuple(logits.shape))
        return logits

    monkeypatch.setattr(OutputHead, "slice_logits", recording)
    tiling = Tiling(8, 16)
    hidden = hidden.requires_grad_()
    masked, stats, _ = scores_from_hidden(hidden, labels, head, tiling, with_stats=True, mask=mask)
    masked.sum().backward()
    assert max(rows for rows, _ in shapes) <= 8 and max(cols for _, cols in shapes) <= 16
    assert sum(rows for rows, cols in shapes) == 2 * int(mask.sum()) * 4  # forward + backward, 4 slices of 50
    full = logps_from_hidden(hidden.detach(), labels, head)
    assert (masked.detach()[~mask] == 0).all()
    assert max_error(masked.detach()[mask], full[mask]) < TOL
    assert (stats.entropy[~mask] == 0).all() and (hidden.grad[~mask] == 0).all()


def test_chunked_head_without_grad_builds_no_graph():
    hidden, labels, linear = random_inputs(seed=1)
    with torch.no_grad():
        logps = logps_from_hidden(hidden, labels, OutputHead(linear), Tiling(5, 7))
    assert not logps.requires_grad
    assert logps.shape == labels.shape and logps.dtype == torch.float32


def tiny_gemma2(vocab: int = 60):
    from transformers import Gemma2Config, Gemma2ForCausalLM
    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                          final_logit_softcapping=2.0, attn_logit_softcapping=50.0, sliding_window=16,
                          pad_token_id=0, attn_implementation="eager")
    return Gemma2ForCausalLM(config).eval()


def batch_with_padding(vocab: int, rows: int = 3, length: int = 11):
    generator = torch.Generator().manual_seed(5)
    input_ids = torch.randint(1, vocab, (rows, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0
    attention_mask[2, 4:] = 0
    return input_ids.masked_fill(attention_mask == 0, 0), attention_mask


@pytest.mark.parametrize("build", [lambda: make_model(70), tiny_gemma2], ids=["llama", "gemma2-softcap"])
@pytest.mark.parametrize("tiling", [Tiling(3, 7), Tiling(10, 64), Tiling()], ids=str)
def test_patched_forward_matches_model_logits(build, tiling):
    """``score_tokens=True`` equals ``naive_token_logps(model(...).logits)``; gradients w.r.t. every parameter too."""
    model = build()
    reference = build()
    reference.load_state_dict(model.state_dict())
    enable_token_scoring(model, tiling)
    assert enable_token_scoring(model, tiling) is model  # idempotent
    input_ids, attention_mask = batch_with_padding(model.config.vocab_size)
    valid = attention_mask[:, 1:].float()

    scores = model(input_ids=input_ids, attention_mask=attention_mask, score_tokens=True, return_hidden=True,
                   return_stats=True)
    outputs = reference(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    naive = naive_token_logps(outputs.logits, input_ids)
    assert max_error(scores.token_logps * valid, naive * valid) < TOL
    assert torch.equal(scores.hidden, outputs.hidden_states[-1][:, :-1])
    entropy, mean_logit, is_top1, _ = naive_stats(outputs.logits[:, :-1].detach(), input_ids[:, 1:])
    assert max_error(scores.stats.entropy.double() * valid, entropy * valid) < TOL
    assert max_error(scores.stats.mean_logit.double() * valid, mean_logit * valid) < TOL
    assert torch.equal(scores.stats.is_top1, is_top1)

    (scores.token_logps * valid).sum().backward()
    (naive * valid).sum().backward()
    for (name, ours), theirs in zip(model.named_parameters(), reference.parameters()):
        assert max_error(ours.grad, theirs.grad) < TOL, name


def test_softcap_is_read_from_the_config():
    model = tiny_gemma2()
    head = output_head(model)
    assert head.softcap == 2.0 and head.module is model.lm_head
    assert output_head(make_model(20)).softcap is None


def test_plain_forward_is_unchanged():
    model = make_model(40)
    input_ids, attention_mask = batch_with_padding(40)
    before = model(input_ids=input_ids, attention_mask=attention_mask).logits
    enable_token_scoring(model, Tiling(4, 8))
    after = model(input_ids=input_ids, attention_mask=attention_mask).logits
    assert torch.equal(before, after)
