"""Lightning callbacks: a method's exports and toy benchmark, image logging, a `last.ckpt` kept
current at the end of training and on interrupt, a stop (or skip) at a non-finite loss, and the
run's time and peak memory."""

from unlearn.callbacks.export import ExportArtifacts
from unlearn.callbacks.image_logger import ImageLogger, save_grid
from unlearn.callbacks.last_checkpoint import CheckpointAtTrainEnd, CheckpointOnException
from unlearn.callbacks.non_finite import NonFiniteLoss, NonFiniteLossError
from unlearn.callbacks.resources import ResourceUsage
from unlearn.callbacks.toy_benchmark import ToyBenchmark

__all__ = [
    "CheckpointAtTrainEnd",
    "CheckpointOnException",
    "ExportArtifacts",
    "ImageLogger",
    "NonFiniteLoss",
    "NonFiniteLossError",
    "ResourceUsage",
    "ToyBenchmark",
    "save_grid",
]
