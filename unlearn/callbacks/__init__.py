"""Lightning callbacks: image logging, and a `last.ckpt` kept current at the end of training and on interrupt."""

from unlearn.callbacks.image_logger import ImageLogger, save_grid
from unlearn.callbacks.last_checkpoint import CheckpointAtTrainEnd, CheckpointOnException

__all__ = ["CheckpointAtTrainEnd", "CheckpointOnException", "ImageLogger", "save_grid"]
