"""KeyFact: the built-in benchmark task (preference pairs that differ in one key token) and its tiny base model.

Typical use::

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from tokenweight.keyfact import (build_keyfact, evaluate_keyfact, judge_verdict_accuracy, keyfact_base_model,
                                     one_thread)

    path = keyfact_base_model()              # shipped with the package (other settings: built once, cached)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    data = build_keyfact(n_train=1000, chosen_longer=0.8)
    with one_thread():                       # tiny models: intra-op threads only contend on a busy CPU
        metrics = evaluate_keyfact(model, tokenizer, data["eval"])
        judge = judge_verdict_accuracy(model, tokenizer, data["eval"])   # the model as AttentionPO's judge
"""

from .base_model import cache_root, keyfact_base_model
from .build import SIZES, one_thread
from .facts import DEFAULT_FACTS_PATH, load_facts, resolve_facts, save_facts, validate_facts
from .generator import build_keyfact, heldout_items
from .judge import judge_verdict_accuracy, judge_verdict_logits
from .metrics import (OUTCOMES, answer_set_logps, evaluate_keyfact, generated_keys, greedy_generations,
                      greedy_outcomes, key_margins, key_position, key_slot, key_slots, key_weight_rank,
                      key_weight_share, key_weight_stats, key_word, keyfact_item_metrics, nonkey_kl, pref_acc)
from .tokenizer import build_keyfact_tokenizer, keyfact_vocabulary

__all__ = ["DEFAULT_FACTS_PATH", "OUTCOMES", "SIZES", "answer_set_logps", "build_keyfact", "build_keyfact_tokenizer",
           "cache_root", "evaluate_keyfact", "generated_keys", "greedy_generations", "greedy_outcomes", "heldout_items",
           "judge_verdict_accuracy", "judge_verdict_logits", "key_margins", "key_position", "key_slot", "key_slots",
           "key_weight_rank", "key_weight_share", "key_weight_stats", "key_word", "keyfact_base_model", "keyfact_item_metrics",
           "keyfact_vocabulary", "load_facts", "nonkey_kl", "one_thread", "pref_acc", "resolve_facts", "save_facts",
           "validate_facts"]
