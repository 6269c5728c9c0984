"""tokenweight: token-weighted preference optimization (DPO, OTPO, TI-DPO, AttentionPO) on the Hugging Face stack."""

from tokenweight.weights.attention import attention_weights
from tokenweight.config import TokenweightConfig
from tokenweight.data import PreferenceCollator, load_preference_split, tokenize_preference_dataset
from tokenweight.objectives import pair_loss
from tokenweight.weights.otpo import otpo_weights
from tokenweight.trainer import TokenweightTrainer
from tokenweight.weights import SCHEMES, WeightingScheme, register_scheme
from tokenweight.weights.tidpo import tidpo_weights

__version__ = "0.1.0"
__all__ = ["SCHEMES", "attention_weights", "otpo_weights", "tidpo_weights", "PreferenceCollator", "TokenweightConfig", "TokenweightTrainer", "WeightingScheme",
           "load_preference_split", "pair_loss", "register_scheme", "tokenize_preference_dataset"]
