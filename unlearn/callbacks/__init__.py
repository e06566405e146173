"""Lightning callbacks: image logging and checkpoints on interrupt."""

from unlearn.callbacks.checkpoint_on_exception import CheckpointOnException
from unlearn.callbacks.image_logger import ImageLogger, save_grid

__all__ = ["CheckpointOnException", "ImageLogger", "save_grid"]
