"""Lightning callbacks: image logging, a `last.ckpt` kept current at the end of training and on interrupt,
and a stop (or skip) at a non-finite loss."""

from unlearn.callbacks.image_logger import ImageLogger, save_grid
from unlearn.callbacks.last_checkpoint import CheckpointAtTrainEnd, CheckpointOnException
from unlearn.callbacks.non_finite import NonFiniteLoss, NonFiniteLossError

__all__ = ["CheckpointAtTrainEnd", "CheckpointOnException", "ImageLogger", "NonFiniteLoss", "NonFiniteLossError",
           "save_grid"]
