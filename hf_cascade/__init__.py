"""hf_cascade: Cascade Speculative Drafting (Chen et al., arXiv 2312.11462) for Hugging Face transformers.

Faster `model.generate()` with exactly the target's output: a list of smaller assistant models and the Max-Gram
statistical drafter draft in a vertical and horizontal cascade; the target reviews every draft exactly.
"""

from .candidate_generator import CascadeCandidateGenerator, MaxGramCandidateGenerator
from .config import CascadeConfig, MaxGramConfig, default_k_matrix
from .cpu import use_onednn_linear
from .drafter_packing import forget_packed_drafter, pack_drafter
from .errors import CascadeError, CascadeTypeError, CascadeValueError
from .generation import CascadeDecoderOnlyOutput, CascadeEncoderDecoderOutput, disable, enable, generate
from .loading import default_model_path, load_model_and_tokenizer
from .max_gram import BigramTable, MaxGramIndex
from .memory import MaxGramMemory
from .stats import CascadeStats, LevelStats
from .tuning import tune

__version__ = "0.1.0"

__all__ = [
    "BigramTable",
    "CascadeCandidateGenerator",
    "CascadeConfig",
    "CascadeDecoderOnlyOutput",
    "CascadeEncoderDecoderOutput",
    "CascadeError",
    "CascadeStats",
    "CascadeTypeError",
    "CascadeValueError",
    "LevelStats",
    "MaxGramCandidateGenerator",
    "MaxGramConfig",
    "MaxGramIndex",
    "MaxGramMemory",
    "default_k_matrix",
    "default_model_path",
    "disable",
    "enable",
    "forget_packed_drafter",
    "generate",
    "load_model_and_tokenizer",
    "pack_drafter",
    "tune",
    "use_onednn_linear",
]
