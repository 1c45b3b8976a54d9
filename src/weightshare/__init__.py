"""weightshare: compress trained PyTorch networks by weight sharing.

pretrain (or load) -> retrain with a method -> QuantizedModel -> .wsz file -> decode -> evaluate.
"""

__version__ = "0.1.0"

from .accounting import paper_style, values_only, weight_entropy_bits
from .codec import FormatError, check_compatible, decode, encode, load_compressed, save_compressed
from .codec_report import file_rates, format_inspect, inspect
from .compress import compress
from .config import ConfigError, DataConfig, TrainConfig
from .coverage import covered_parameters
from .data import DataBundle, DataError, load_data
from .deadweights import remove_dead_weights
from .kmeans import kmeans1d
from .methods import Method, SoftWeightSharing, SWSConfig
from .mixture import MixtureConfig, MixturePrior
from .models import build_model, count_parameters
from .pipeline import pretrain
from .quantized import QuantizedModel, QuantizedTensor, load_quantized, save_quantized
from .train import TrainingDiverged, evaluate, fit

__all__ = [
    "__version__",
    "ConfigError",
    "DataBundle",
    "DataConfig",
    "DataError",
    "FormatError",
    "Method",
    "MixtureConfig",
    "MixturePrior",
    "QuantizedModel",
    "QuantizedTensor",
    "SWSConfig",
    "SoftWeightSharing",
    "TrainConfig",
    "TrainingDiverged",
    "build_model",
    "check_compatible",
    "compress",
    "count_parameters",
    "covered_parameters",
    "decode",
    "encode",
    "evaluate",
    "file_rates",
    "fit",
    "format_inspect",
    "inspect",
    "kmeans1d",
    "load_compressed",
    "load_data",
    "load_quantized",
    "paper_style",
    "pretrain",
    "remove_dead_weights",
    "save_compressed",
    "save_quantized",
    "values_only",
    "weight_entropy_bits",
]
