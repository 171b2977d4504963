"""Training Inf-DiT from scratch, through the whole-image UniBA path.

Two objectives (`objective.py`): the paper's EDM recipe, and a one-step objective from the bicubic
start that a small CPU-trained model can learn. Every random draw of step s comes from a generator
seeded by (seed, s), so the data order does not depend on history and `resume` reproduces an
uninterrupted run bit for bit (on CPU).
"""

from infdit_cli.train.checkpoint import load_checkpoint, save_checkpoint
from infdit_cli.train.config import TrainConfig, TrainError, TrainProgress, TrainResult
from infdit_cli.train.data import CropSource, list_images, make_lr, random_crop, split_files, step_generator
from infdit_cli.train.loop import learning_rate, train
from infdit_cli.train.objective import OBJECTIVES, denoise, edm_loss, psnr_gain, validation_loss

__all__ = [
    "OBJECTIVES", "CropSource", "TrainConfig", "TrainError", "TrainProgress", "TrainResult", "denoise", "edm_loss",
    "learning_rate", "list_images", "load_checkpoint", "make_lr", "psnr_gain", "random_crop", "save_checkpoint",
    "split_files", "step_generator", "train", "validation_loss",
]
