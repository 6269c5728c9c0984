"""Held-out evaluation: implicit-reward accuracy and margins (unweighted and under a scheme's weights), generation
statistics, reward-model win rate, and AlpacaEval / Arena-Hard exports of generations.

The implicit reward of a response is r = β·Σ_t (log π_θ − log π_ref)(y_t) over its completion tokens
(unweighted, so that every scheme is judged by the same yardstick). ``pref_acc`` counts a pair as won when
r(chosen) > r(rejected) and half won on a tie, so a policy equal to its reference scores exactly 0.5.
``logp_acc`` ranks by the policy's own log-likelihood Σ_t log π_θ(y_t) (meaningful for the reference too).

A reference-free scheme (SimPO, ConfPO) has no π_ref: its held-out ``pref_acc`` and ``margin``
(:func:`held_out_preference`) use the scheme's own reward r = β·Σ_t ω_t log π_θ(y_t) (SimPO: the length-normalised
log-likelihood; ConfPO: the mean log-prob of the low-confidence tokens), the reward it trains and TRL's CPO logs, so
the untrained policy does not score 0.5 there.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from tokenweight.config import check_scheme_objective
from tokenweight.data import PreferenceCollator
from tokenweight.logps import enable_token_scoring
from tokenweight.masks import from_shifted
from tokenweight.models import generation_kwargs
from tokenweight.objectives import weighted_log_ratios
from tokenweight.weights import WeightingScheme, batch_inputs, weigh_batch


@dataclass
class PairScores:
    """Per-pair sums over completion tokens, each ``[P]``: policy and reference log-probs of both responses,
    and completion lengths."""

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    chosen_len: torch.Tensor
    rejected_len: torch.Tensor


@torch.no_grad()
def score_pairs(model: nn.Module, ref_model: nn.Module | None, dataset, pad_token_id: int, batch_size: int = 8,
                progress: bool = True) -> PairScores:
    """Score every tokenized pair of ``dataset`` under ``model`` and ``ref_model``. With ``ref_model=None`` the
    reference log-probs come from the dataset's precomputed ``chosen_ref_logps``/``rejected_ref_logps`` columns
    when present, else the policy serves as its own reference."""
    collator = PreferenceCollator(pad_token_id=pad_token_id)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collator)
    device = next(model.parameters()).device
    models = [model] if ref_model is None else [model, ref_model]
    training = [m.training for m in models]
    for m in models:
        enable_token_scoring(m).eval()
    sums = {"policy": [], "ref": [], "len": []}
    for batch in tqdm(loader, desc="scoring pairs", disable=not progress, leave=False):
        batch = {k: v.to(device) for k, v in batch.items()}
        mask = batch["loss_mask"].float()
        for name, m in zip(("policy", "ref"), models):
            out = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], score_tokens=True,
                    score_mask=batch["loss_mask"])
            sums[name].append((out.token_logps * mask).sum(dim=1).cpu())
        if ref_model is None and "ref_token_logps" in batch:
            sums["ref"].append((batch["ref_token_logps"] * mask).sum(dim=1).cpu())
        sums["len"].append(mask.sum(dim=1).cpu())
    for m, was_training in zip(models, training):
        m.train(was_training)
    policy, lengths = torch.cat(sums["policy"]), torch.cat(sums["len"])
    ref = torch.cat(sums["ref"]) if sums["ref"] else policy

    def halves(x):  # each batch is [chosen rows; rejected rows]: undo that interleaving per batch
        chosen, rejected = [], []
        for start in range(0, len(x), 2 * batch_size):
            block = x[start:start + 2 * batch_size]
            c, r = block.chunk(2)
            chosen.append(c)
            rejected.append(r)
        return torch.cat(chosen), torch.cat(rejected)

    (pc, pr), (rc, rr), (lc, lr) = halves(policy), halves(ref), halves(lengths)
    return PairScores(pc, pr, rc, rr, lc, lr)


#: What ``pref_acc``/``margin`` rank by (``results.json``'s ``reward``), by whether the scheme uses a reference.
REWARD_DEFINITIONS = {True: "beta * sum_t log(pi/pi_ref)(y_t)",
                      False: "beta * sum_t w_t log pi(y_t) (the scheme's own reward: reference-free)"}


def held_out_preference(model: nn.Module, ref_model: nn.Module | None, scheme: WeightingScheme | None, dataset,
                        pad_token_id: int, beta: float, batch_size: int = 8, progress: bool = True) -> dict[str, float]:
    """``pref_acc``, ``logp_acc`` and ``margin`` of the tokenized pairs (:func:`preference_report`). For a
    reference-free ``scheme`` (``uses_reference = False``) ``pref_acc``/``margin`` come from the scheme's own reward
    β·Σ ω log π_θ (:func:`score_weighted_pairs`) and ``ref_model`` must be ``None``; otherwise from the implicit
    reward against ``ref_model`` (``scheme`` is not used; ``None`` is allowed)."""
    scores = score_pairs(model, ref_model, dataset, pad_token_id, batch_size=batch_size, progress=progress)
    report = preference_report(scores, beta)
    if scheme is None or scheme.uses_reference:
        return report
    if ref_model is not None:
        check_scheme_objective(scheme, given=("held-out ref_model",))
    weighted = weighted_preference_report(score_weighted_pairs(model, None, scheme, dataset, pad_token_id,
                                                               batch_size, progress), beta)
    return {"pref_acc": weighted["weighted_pref_acc"], "logp_acc": report["logp_acc"],
            "margin": weighted["weighted_margin"]}


def preference_report(scores: PairScores, beta: float) -> dict[str, float]:
    """``pref_acc``, ``logp_acc`` and mean implicit-reward ``margin`` (β units) from :class:`PairScores`."""
    reward_c = beta * (scores.policy_chosen - scores.ref_chosen)
    reward_r = beta * (scores.policy_rejected - scores.ref_rejected)
    won = (reward_c > reward_r).float() + 0.5 * (reward_c == reward_r).float()
    return {
        "pref_acc": won.mean().item(),
        "logp_acc": (scores.policy_chosen > scores.policy_rejected).float().mean().item(),
        "margin": (reward_c - reward_r).mean().item(),
    }


# ----------------------------------------------------------------------------------------------- scheme weights


def _policy_forward(model: nn.Module, batch: dict[str, torch.Tensor]):
    """``forward(return_hidden)`` of :func:`~tokenweight.weights.weigh_batch` for a frozen scoring pass."""
    def forward(return_hidden: bool):
        with torch.no_grad():
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], score_tokens=True,
                         score_mask=batch["loss_mask"], return_hidden=return_hidden)
    return forward


def pair_token_weights(scheme: WeightingScheme, model: nn.Module, dataset, pad_token_id: int, batch_size: int = 8,
                       progress: bool = True, plans: bool = False):
    """Per tokenized pair, the scheme's weights of its chosen and of its rejected completion tokens, in completion
    order (EOS included; entry ``k`` belongs to ``chosen_ids[k]`` / ``rejected_ids[k]``; 0 for a first completion
    token at position 0, which no position predicts), weighed as the trainer weighs a batch
    (:func:`~tokenweight.weights.weigh_batch`). With ``plans=True`` also, per pair, the scheme's coupling
    ``[n_chosen, n_rejected]`` over the predicted completion tokens (a numpy array; OTPO's transport plan) or
    ``None``."""
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=PreferenceCollator(pad_token_id=pad_token_id))
    device = next(model.parameters()).device
    was_training = model.training
    enable_token_scoring(model).eval()
    out, couplings = [], []
    for batch in tqdm(loader, desc=f"token weights ({scheme.name})", disable=not progress, leave=False):
        batch = {k: v.to(device) for k, v in batch.items()}
        inputs = batch_inputs(batch, model, want_plan=plans)
        token_weights, _ = weigh_batch(scheme, inputs, _policy_forward(model, batch))
        weights = from_shifted(token_weights.weights.float().cpu())
        rows = [w[m].tolist() for w, m in zip(weights, batch["completion_mask"].bool().cpu())]
        mask = inputs.loss_mask.cpu()
        pairs = len(rows) // 2
        out.extend(zip(rows[:pairs], rows[pairs:]))
        counts = mask.sum(dim=1).tolist()
        plan = None if token_weights.plan is None else token_weights.plan.float().cpu()
        couplings.extend(None if plan is None else plan[b, :counts[b], :counts[pairs + b]].numpy()
                         for b in range(pairs))
    model.train(was_training)
    return (out, couplings) if plans else out


@dataclass
class WeightedScores:
    """Per-pair weighted log-ratio sums ``Σ_t ω_t (log π_θ − log π_ref)(y_t)`` (the reference's terms weighed by the
    scheme's reference weights when it has them; a reference-free scheme: ``Σ_t ω_t log π_θ(y_t)``;
    :func:`~tokenweight.objectives.weighted_log_ratios`), each ``[P]``."""

    chosen: torch.Tensor
    rejected: torch.Tensor


def score_weighted_pairs(model: nn.Module, ref_model: nn.Module | None, scheme: WeightingScheme, dataset,
                         pad_token_id: int, batch_size: int = 8, progress: bool = True) -> WeightedScores:
    """Weighted log-ratio sums of every tokenized pair under ``scheme``'s weights, weighed as the trainer weighs a
    batch (:func:`~tokenweight.weights.weigh_batch`: the same policy forward gives the weights' hidden states and
    the log-probs). A reference-free scheme's sums are of the policy's own log-probs, ``Σ ω log π_θ``, and
    ``ref_model`` is not used (``None`` is allowed); any other scheme needs ``ref_model``."""
    if scheme.uses_reference and ref_model is None:
        raise ValueError(f"weighting={scheme.name!r} scores log-ratios against a reference: give ref_model")
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=PreferenceCollator(pad_token_id=pad_token_id))
    device = next(model.parameters()).device
    models = (model, ref_model) if scheme.uses_reference else (model,)
    training = [m.training for m in models]
    for m in models:
        enable_token_scoring(m).eval()
    chosen, rejected = [], []
    for batch in tqdm(loader, desc=f"weighted scoring ({scheme.name})", disable=not progress, leave=False):
        batch = {k: v.to(device) for k, v in batch.items()}
        inputs = batch_inputs(batch, model)
        token_weights, policy = weigh_batch(scheme, inputs, _policy_forward(model, batch))
        ref_logps = None
        if scheme.uses_reference:
            with torch.no_grad():
                ref_logps = ref_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                      score_tokens=True, score_mask=batch["loss_mask"]).token_logps
        weighted = weighted_log_ratios(policy.token_logps, ref_logps, token_weights.weights.float(),
                                       inputs.loss_mask, token_weights.ref_weights).cpu()
        c, r = weighted.chunk(2)
        chosen.append(c)
        rejected.append(r)
    for m, was_training in zip(models, training):
        m.train(was_training)
    return WeightedScores(torch.cat(chosen), torch.cat(rejected))


def weighted_preference_report(scores: WeightedScores, beta: float) -> dict[str, float]:
    """``weighted_pref_acc`` (ties count half) and ``weighted_margin`` (β units) of :class:`WeightedScores`."""
    reward_c, reward_r = beta * scores.chosen, beta * scores.rejected
    won = (reward_c > reward_r).float() + 0.5 * (reward_c == reward_r).float()
    return {"weighted_pref_acc": won.mean().item(), "weighted_margin": (reward_c - reward_r).mean().item()}


# ----------------------------------------------------------------------------------------------- generation


@torch.no_grad()
def generate_completions(model: nn.Module, prompt_ids: list[list[int]], pad_token_id: int, eos_token_id: int,
                         max_new_tokens: int = 64, do_sample: bool = False, temperature: float = 1.0,
                         top_p: float = 1.0, batch_size: int = 16, seed: int = 0,
                         progress: bool = True) -> list[list[int]]:
    """Completions of each prompt (token ids, left-padded batches), cut before the first EOS.

    Greedy unless ``do_sample``; sampling is seeded with ``seed``. A completion without EOS keeps all
    ``max_new_tokens`` tokens.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0} if do_sample else \
        {"do_sample": False}
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    completions = []
    for start in tqdm(range(0, len(prompt_ids), batch_size), desc="generating", disable=not progress, leave=False):
        chunk = prompt_ids[start:start + batch_size]
        width = max(len(p) for p in chunk)
        input_ids = torch.tensor([[pad_token_id] * (width - len(p)) + list(p) for p in chunk], device=device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                eos_token_id=eos_token_id, pad_token_id=pad_token_id, **sampling,
                                **generation_kwargs(model))
        for new in output[:, width:].tolist():
            completions.append(new[:new.index(eos_token_id)] if eos_token_id in new else new)
    torch.random.set_rng_state(generator_state)
    model.train(was_training)
    return completions


def distinct_n(completions: list[list[int]], n: int) -> float:
    """Corpus distinct-n: distinct n-grams over all n-grams of all completions (0 when there are none)."""
    grams = [tuple(c[i:i + n]) for c in completions for i in range(len(c) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def generation_stats(completions: list[list[int]], max_new_tokens: int) -> dict[str, float]:
    """``gen_len`` (mean tokens before EOS), ``gen_truncated_rate`` (hit ``max_new_tokens``), ``distinct_1/2``."""
    if not completions:
        raise ValueError("generation_stats: no completions")
    return {"gen_len": sum(len(c) for c in completions) / len(completions),
            "gen_truncated_rate": sum(len(c) >= max_new_tokens for c in completions) / len(completions),
            "distinct_1": distinct_n(completions, 1), "distinct_2": distinct_n(completions, 2)}


# ----------------------------------------------------------------------------------------------- reward model


def reward_text(tokenizer, prompt: str | list[dict], completion: str) -> str:
    """What the reward model reads: the chat-rendered conversation (conversational prompt) or prompt + answer."""
    if isinstance(prompt, list):
        if tokenizer.chat_template is None:
            raise ValueError("the reward model's tokenizer has no chat template; it cannot read conversational rows")
        return tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": completion}], tokenize=False)
    joiner = "" if not prompt or prompt[-1].isspace() or completion[:1].isspace() else " "
    return prompt + joiner + completion


@torch.no_grad()
def reward_scores(reward_model: nn.Module, tokenizer, prompts: list, completions: list[str], batch_size: int = 8,
                  progress: bool = True) -> torch.Tensor:
    """``[N]`` scalar rewards (logit 0 of an ``AutoModelForSequenceClassification``) of each prompt/completion."""
    if reward_model.config.pad_token_id is None:
        raise ValueError("the reward model's config has no pad_token_id (needed to find each row's last token)")
    texts = [reward_text(tokenizer, p, c) for p, c in zip(prompts, completions, strict=True)]
    device = next(reward_model.parameters()).device
    was_training = reward_model.training
    reward_model.eval()
    scores = []
    for start in tqdm(range(0, len(texts), batch_size), desc="reward model", disable=not progress, leave=False):
        ids = [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts[start:start + batch_size]]
        width = max(len(i) for i in ids)
        pad = reward_model.config.pad_token_id
        input_ids = torch.tensor([i + [pad] * (width - len(i)) for i in ids], device=device)
        attention_mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids], device=device)
        scores.append(reward_model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float().cpu())
    reward_model.train(was_training)
    return torch.cat(scores)


def win_rate(policy_scores: torch.Tensor, baseline_scores: torch.Tensor) -> float:
    """Fraction of prompts where the policy's reward beats the baseline's (ties count half)."""
    return ((policy_scores > baseline_scores).float() + 0.5 * (policy_scores == baseline_scores).float()).mean().item()


# ----------------------------------------------------------------------------------------------- exports


def instruction_text(prompt: str | list[dict]) -> str:
    """The instruction of a prompt: the string itself, or the content of its last user message."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m["role"] == "user"]
    if not users:
        raise ValueError(f"conversational prompt without a user message: {prompt!r:.120}")
    return users[-1]


def export_alpacaeval(path: str | Path, instructions: list[str], outputs: list[str], generator: str) -> Path:
    """Write AlpacaEval's model-outputs JSON: ``[{"instruction", "output", "generator"}]``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [{"instruction": i, "output": o, "generator": generator}
               for i, o in zip(instructions, outputs, strict=True)]
    path.write_text(json.dumps(records, indent=2, ensure_ascii=False))
    return path


def export_arena_hard(path: str | Path, question_ids: list[str], outputs: list[str], model_id: str) -> Path:
    """Write Arena-Hard's answer JSONL: one ``{"question_id", "answer_id", "model_id", "model", "choices":
    [{"index": 0, "turns": [{"content"}]}], "tstamp"}`` per line (``model_id`` and ``model`` for both the old
    and the new arena-hard-auto readers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.time()
    with path.open("w", encoding="utf-8") as handle:
        for question_id, output in zip(question_ids, outputs, strict=True):
            record = {"question_id": str(question_id), "answer_id": f"{model_id}-{question_id}",
                      "model_id": model_id, "model": model_id,
                      "choices": [{"index": 0, "turns": [{"content": output}]}], "tstamp": stamp}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path
