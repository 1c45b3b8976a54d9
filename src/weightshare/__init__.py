"""weightshare: compress trained PyTorch networks by weight sharing.

pretrain (or load) -> retrain with a method -> QuantizedModel -> .wsz file -> decode -> evaluate.
"""

from weightshare.codec import check_compatible, decode, encode, load_compressed, save_compressed
from weightshare.codec.inspect import file_rates, format_inspect, inspect
from weightshare.core.coverage import CoverageRule, covered_parameters
from weightshare.core.errors import (
    ConfigError,
    DataError,
    DependencyError,
    FormatError,
    MismatchError,
    RunDirError,
    RunInterrupted,
    TrainingDiverged,
)
from weightshare.core.kmeans import kmeans1d
from weightshare.core.quantized import QuantizedModel, QuantizedTensor, load_quantized, save_quantized
from weightshare.core.version import __version__
from weightshare.data.config import DataConfig, DataOverrides
from weightshare.data.datasets import DataBundle, load_data
from weightshare.export import export_dense, export_onnx, export_safetensors, load_safetensors_layout
from weightshare.finish.codebook_tuning import tune_codebooks
from weightshare.finish.config import FinishConfig
from weightshare.finish.deadweights import remove_dead_weights
from weightshare.finish.densequant import quantize_dense_params
from weightshare.finish.stages import run_finishing
from weightshare.methods import (
    ADMM,
    AdmmConfig,
    DCConfig,
    DeepCompression,
    Method,
    MethodConfig,
    ProbabilisticWeightFixing,
    PWFNConfig,
    SoftWeightSharing,
    SWSConfig,
)
from weightshare.methods.space import SearchRange
from weightshare.methods.sws.prior import MixtureConfig, MixturePrior
from weightshare.models.architectures import build_model, count_parameters
from weightshare.pipeline.compress import compress, refinish
from weightshare.pipeline.pretrain import pretrain
from weightshare.report.accounting import paper_style, values_only, weight_entropy_bits
from weightshare.search import TuneConfig, compare, tune
from weightshare.train.config import TrainConfig
from weightshare.train.distill import Distillation, DistillConfig, distillation_loss
from weightshare.train.hooks import TrainContext
from weightshare.train.loop import evaluate, evaluate_model, fit

__all__ = [
    "MismatchError",
    "RunDirError",
    "RunInterrupted",
    "ADMM",
    "DeepCompression",
    "ProbabilisticWeightFixing",
    "TrainContext",
    "SearchRange",
    "TuneConfig",
    "compare",
    "tune",
    "evaluate_model",
    "run_finishing",
    "tune_codebooks",
    "__version__",
    "AdmmConfig",
    "ConfigError",
    "DCConfig",
    "DataBundle",
    "DataConfig",
    "DataError",
    "DataOverrides",
    "DependencyError",
    "FinishConfig",
    "DistillConfig",
    "Distillation",
    "distillation_loss",
    "FormatError",
    "Method",
    "MethodConfig",
    "MixtureConfig",
    "MixturePrior",
    "PWFNConfig",
    "QuantizedModel",
    "QuantizedTensor",
    "SWSConfig",
    "SoftWeightSharing",
    "TrainConfig",
    "TrainingDiverged",
    "build_model",
    "check_compatible",
    "compress",
    "refinish",
    "count_parameters",
    "covered_parameters",
    "CoverageRule",
    "decode",
    "encode",
    "evaluate",
    "export_dense",
    "export_onnx",
    "export_safetensors",
    "file_rates",
    "fit",
    "format_inspect",
    "inspect",
    "kmeans1d",
    "load_compressed",
    "load_data",
    "load_quantized",
    "load_safetensors_layout",
    "paper_style",
    "pretrain",
    "quantize_dense_params",
    "remove_dead_weights",
    "save_compressed",
    "save_quantized",
    "values_only",
    "weight_entropy_bits",
]
