"""scoresde: score-based diffusion models as stochastic differential equations.

Public API (re-exported here): the SDEs :class:`VPSDE`, :class:`SubVPSDE`, :class:`VESDE`;
:class:`ScoreModel` and the parameterization conversions; time grids and step selections.
"""
from .grids import respaced_betas, select_timesteps, space_timesteps, time_grid
from .losses import LossSecondMomentSampler, ddpm_loss, dsm_loss, hybrid_loss
from .metrics import digit_frechet_distance, frechet_distance, sliced_wasserstein
from .likelihood import BitsPerDimResult, LikelihoodResult, bits_per_dim, decode, encode, log_likelihood
from .sampling import SampleInfo, sample
from .constrained import colorize, inpaint
from .guidance import classifier_free_guidance, classifier_guidance
from .schedules import CosineSchedule, LinearSchedule
from .score import ScoreModel, network_time
from .pretrained import from_diffusers
from .reference import load_reference_checkpoint
from .sde import SDE, ReverseSDE, SubVPSDE, VESDE, VPSDE, sde_from_config
from .train import TrainConfig, load_score_model, shard_evaluate, train
from .classify import classifier_accuracy, load_classifier, train_classifier
from .data_stats import suggest_sigma_max
from .device import autocast_score, resolve_device
from .vlb import VLBResult, ddpm_vlb

__version__ = "0.1.0"

__all__ = [
    "SDE", "VPSDE", "SubVPSDE", "VESDE", "ReverseSDE", "sde_from_config",
    "LinearSchedule", "CosineSchedule",
    "ScoreModel", "network_time", "from_diffusers", "load_reference_checkpoint",
    "time_grid", "select_timesteps", "space_timesteps", "respaced_betas",
    "sample", "SampleInfo", "inpaint", "colorize", "classifier_guidance", "classifier_free_guidance",
    "log_likelihood", "bits_per_dim", "encode", "decode", "LikelihoodResult", "BitsPerDimResult", "ddpm_vlb", "VLBResult",
    "dsm_loss", "ddpm_loss", "hybrid_loss", "LossSecondMomentSampler",
    "train", "TrainConfig", "load_score_model", "shard_evaluate",
    "train_classifier", "load_classifier", "classifier_accuracy",
    "sliced_wasserstein", "frechet_distance", "digit_frechet_distance",
    "suggest_sigma_max", "autocast_score", "resolve_device",
]
