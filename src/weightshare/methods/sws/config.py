"""Soft weight-sharing's settings (the ``[sws]`` section) and its presets."""

from __future__ import annotations

import dataclasses

from weightshare.core.settings import section, setting
from weightshare.finish.config import FinishConfig
from weightshare.methods.base import AT_LEAST_ONE_EPOCH, MethodConfig
from weightshare.methods.space import SearchRange
from weightshare.methods.sws.prior import MixtureConfig
from weightshare.train.config import TrainConfig
from weightshare.train.presets import Preset

__all__ = ["SWSConfig", "SWS_PRESETS"]


# Presets (docs/methods.md#sws-presets): the paper's LeNet settings (Ullrich, Meeds & Welling 2017, Sec. 4.2),
# WRN with 64 components, and the Keras tutorial's network with its own settings (J = 16, pi0 = 0.99,
# tau = 0.003, 30 epochs).
SWS_PRESETS: dict[str, Preset] = {
    # digits has 1,257 training images (40 steps an epoch at batch 32), so the mixture gets 10x the
    # paper's learning rates to converge in ~6,000 steps instead of ~43,000, and a larger tau. The batch size is
    # the preset's own: from a source pretrained at batch 128 (the loop's default) the same epochs are 1,500 steps,
    # too few for the weights to reach the components (decoded error 45-66 %, benchmarks/RESULTS.md). The zero
    # component's Gamma rate drops from 2 to 0.5 (docs/methods.md#sws-presets): the hyper-prior's pseudo-data were
    # sized for MNIST networks 15-25x larger and held the spike at sigma ~0.013, as wide as the weights it prunes.
    # Distillation from the pretrained network at T = 2 ([distill], docs/methods.md#distill): 150 epochs at a
    # constant rate on 1,257 images drift from the pretrained function (even tau = 1e-4 retrained 2.22% -> 2.5-3.6%);
    # the teacher holds it there (validation median 2.78% over seeds 0-4, 3.33% without over seeds 0-2; RESULTS.md,
    # digits). It keeps ~8% of the weights instead of ~6.5%, and the float32 biases are a third of the file: 4-bit
    # codebooks of their own ([finish] dense_param_bits) take them from ~690 to ~360 B, the validation error not
    # worse than at 5 or 6 bits on three runs.
    "digits": {
        "train": {"epochs": 150},
        "data": {"batch_size": 32},
        "distill": {"kd_temp": 2.0},
        "finish": {"dense_param_bits": 4},
        "sws": {
            "tau": 3e-2,
            "pi0": 0.99,
            "lr_w": 1e-3,
            "lr_means": 1e-3,
            "lr_precisions": 1e-2,
            "lr_mixing": 1e-2,
            "gamma_beta_zero": 0.5,
        },
    },
    # tau and lr_w picked by `weightshare tune` on the validation split (benchmarks/RESULTS.md, "Presets re-picked
    # by the search"): of 8 trials over tau [0.015, 0.08] x lr_w [5e-4, 2e-3] (log), tau 3.76e-2 with the weights
    # at 1.35e-3 had the lowest validation error (2.18%) at 3.8% non-zero; the former tau 3e-2 / lr_w 1e-3 sat at
    # the target's edge (2.03%, 1.82%, 1.99% for seeds 0-2 on another machine). A cosine decay of every rate lets
    # the weights settle on their components before the hard assignment (1.88% vs 2.03% with a constant rate).
    # The biases go into 4-bit codebooks of their own ([finish] dense_param_bits; 1,640 -> ~430 B, RESULTS.md),
    # stored as float16 with the shared values (~105 B less; the three seeds' decoded errors unchanged).
    "lenet300": {
        "train": {"epochs": 100, "lr_schedule": "cosine"},
        "sws": {"tau": 3.76e-2, "lr_w": 1.35e-3},
        "finish": {"dense_param_bits": 4, "float16": True},
    },
    # The paper's tau = 0.05 and "weights at about the pretraining lr" (1e-3 here, Sec. 4.2) with the cosine decay
    # above; weights at 5e-4 gave 1.39%, at 2e-3 they leave the zero spike again (2% non-zero by epoch 24); a
    # linear tau warm-up stalls the pruning at ~2.8% non-zero (RESULTS.md). Snapping to the means costs ~0.1
    # point here, so this preset adds 3 epochs of codebook fine-tuning (not in the paper; lr and epochs picked on
    # the validation split; codebook_epochs=0 is the paper's method) and retrains on all 60k images (val_size 0).
    # The biases go into 4-bit codebooks, as in lenet300: re-finished from the three seeds' retrained networks
    # (weightshare refinish) the files shrink from ~8.1 to ~6.6 kB at the same decoded error (RESULTS.md), and
    # float16 codebooks and biases take another ~120 B off each, the three seeds' decoded errors unchanged.
    "lenet5": {
        "train": {"epochs": 100, "lr_schedule": "cosine"},
        "data": {"val_size": 0},
        "sws": {"tau": 5e-2, "lr_w": 1e-3},
        "finish": {"codebook_epochs": 3, "codebook_lr": 1e-3, "dense_param_bits": 4, "float16": True},
    },
    # The small vision transformer (132,736 covered weights, MNIST or Fashion-MNIST): the weights at the pretraining
    # rate (1e-3) with a cosine decay, as in the LeNet presets. 30 epochs (the tutorial's length,
    # docs/methods.md#sws-defaults): a ViT epoch costs ~25 LeNet-300-100 epochs. That is ~13,000 steps instead of
    # the LeNets' ~43,000, so the precisions and mixing proportions get ~3x the paper's rates (as digits gets 10x
    # for its ~6,000 steps). The zero spike is pinned narrow (sigma_0 ~ 0.003: Gamma(500000, 4.5), the width
    # LeNet-5's spike reaches by itself). With the paper's hyper-prior the transformer's small weights widened it
    # to sigma_0 = 0.06 and every weight went to zero (decoded 90%); held at sigma 0.02 it no longer collapsed,
    # but the network kept using the weights in its shoulders: zeroing only those took the validation error from
    # 1.8% to 22% (errors["pruned"]). A narrow spike makes "zero" mean zero; tau = 0.3 then buys the sparsity back
    # (6-epoch checks: tau 0.03 65% non-zero, 2.44% validation; tau 0.3 21%, 2.58%). Components start at sigma
    # 0.05 and the means move at the paper's 1e-4: from sigma 0.25 the zero component owned every weight in the
    # first epoch while the other means ran out to |w| > 0.12 and stayed there (benchmarks/RESULTS.md, "A vision
    # transformer").
    "vit": {
        "train": {"epochs": 30, "lr_schedule": "cosine"},
        "sws": {
            "tau": 0.3,
            "lr_w": 1e-3,
            "lr_means": 1e-4,
            "lr_precisions": 1e-2,
            "lr_mixing": 1e-2,
            "init_sigma": 0.05,
            "gamma_alpha_zero": 5e5,
            "gamma_beta_zero": 4.5,
        },
    },
    "wrn16_4": {
        "train": {"epochs": 40},
        "sws": {
            "num_components": 64,
            "pi0": 0.99,
            "lr_w": 1e-3,
            "lr_means": 3e-4,
            "lr_precisions": 1e-3,
            "lr_mixing": 1e-3,
        },
    },
    "tutorialnet": {
        "train": {"epochs": 30},
        "sws": {"num_components": 16, "pi0": 0.99, "tau": 3e-3, "init_means": "fixed", "include_biases": True},
    },
}


@dataclasses.dataclass
class SWSConfig(MethodConfig, MixtureConfig):
    """Every knob of soft weight-sharing: the mixture (inherited), loss and rates, plus train/data/finish.

    The prior prunes one weight at a time and leaves weights that never change the output, so its
    ``[finish]`` removes them by default (lossless; :mod:`weightshare.finish.deadweights`).

    >>> cfg = SWSConfig.preset("lenet5")
    >>> cfg.tau, cfg.data.val_size, cfg.finish.codebook_epochs, cfg.finish.dense_param_bits, cfg.finish.remove_dead
    (0.05, 0, 3, 4, True)
    >>> cfg.finish.float16, SWSConfig.preset("lenet300").finish.float16, SWSConfig.preset("digits").finish.float16
    (True, True, False)
    """

    method = "sws"
    description = "soft weight-sharing (Ullrich, Meeds & Welling 2017)"
    presets = SWS_PRESETS
    # tau sets the sparsity (the paper's LeNet runs: 5e-3 to 5e-2) and the mixture's rates how fast the
    # components follow the weights; the paper tuned these by Bayesian optimisation (Sec. 4.1).
    search_space = {
        "sws": {
            "tau": SearchRange(3e-3, 2e-1, log=True),
            "pi0": SearchRange(0.9, 0.999),
            "lr_w": SearchRange(2e-4, 3e-3, log=True),
            "lr_means": SearchRange(3e-5, 1e-3, log=True),
            "lr_precisions": SearchRange(1e-3, 3e-2, log=True),
            "lr_mixing": SearchRange(1e-3, 3e-2, log=True),
        }
    }

    # tau = 0 leaves the mixture untrained: every weight would be assigned to a component it never met.
    tau: float = setting(5e-3, "weight of the complexity loss: loss = CE + tau/N * L_C", gt=0)
    tau_warmup_epochs: int = setting(0, "linear warm-up of tau over the first epochs", ge=0)
    lr_w: float = setting(5e-4, "Adam learning rate of the network weights", gt=0)
    lr_means: float = setting(1e-4, "Adam learning rate of the mixture means", ge=0)
    lr_precisions: float = setting(3e-3, "Adam learning rate of the log-precisions", ge=0)
    lr_mixing: float = setting(3e-3, "Adam learning rate of the mixing logits", ge=0)
    include_biases: bool = setting(False, "put the biases under the prior too (as the tutorial does)")
    cover_pattern: str | None = setting(None, "regex on parameter names selecting the covered tensors")
    cover_exclude: str | None = setting(None, "regex on parameter names taking tensors out of the covered ones")
    merge_kl: float = setting(1e-10, "merge mixture components whose KL divergence is below this", ge=0)
    assign: str = setting(
        "map", "assignment rule: map (paper) or ml (see docs: steals pruned weights)", choices=("map", "ml")
    )
    quant_skip_last: bool = setting(False, "leave the last covered layer dense (float32)")
    train: TrainConfig = section(TrainConfig, bounds=AT_LEAST_ONE_EPOCH)
    finish: FinishConfig = section(FinishConfig, remove_dead=True)

    def check(self) -> None:
        MixtureConfig.validate(self)
