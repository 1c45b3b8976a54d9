"""Many runs of one pretrained model: hyper-parameter studies (``weightshare tune``) and side-by-side
comparisons of the methods (``weightshare compare``)."""

from weightshare.search.compare import compare
from weightshare.search.config import TuneConfig
from weightshare.search.study import tune

__all__ = ["TuneConfig", "compare", "tune"]
