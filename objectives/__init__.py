"""Pre-training objectives, one LightningModule per file; chosen on the command line by class path
(``--model objectives.ReplacedTokenDetection``), so a new objective needs no registry."""

from objectives.all_tokens_mlm import AllTokensMLM
from objectives.base import PretrainingObjective
from objectives.electra15 import Electra15
from objectives.finetune import SequenceClassification
from objectives.mlm import MaskedLM
from objectives.mlm_plus_rtd import MLMPlusRTD
from objectives.replace_mlm import ReplaceMLM
from objectives.rtd import ReplacedTokenDetection

__all__ = [
    "PretrainingObjective",
    "MaskedLM",
    "ReplacedTokenDetection",
    "Electra15",
    "ReplaceMLM",
    "AllTokensMLM",
    "MLMPlusRTD",
    "SequenceClassification",
]
