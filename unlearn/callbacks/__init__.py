"""Lightning callbacks: image logging, and checkpoints at the end of training or on interrupt."""

from unlearn.callbacks.checkpoint_at_end import CheckpointAtTrainEnd
from unlearn.callbacks.checkpoint_on_exception import CheckpointOnException
from unlearn.callbacks.image_logger import ImageLogger, save_grid

__all__ = ["CheckpointAtTrainEnd", "CheckpointOnException", "ImageLogger", "save_grid"]
