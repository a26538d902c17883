"""Training and fine-tuning small causal LMs on synthetic tasks."""

from hopscope.train.last_token import TrainConfig, TokenBatch, encode_prompts, last_token_accuracy, train_last_token
from hopscope.train.kth_smallest import KthTrainResult, load_task_info, new_gpt2, save_trained, train_kth_smallest

__all__ = [
    "KthTrainResult", "TokenBatch", "TrainConfig", "encode_prompts", "last_token_accuracy", "load_task_info",
    "new_gpt2", "save_trained", "train_kth_smallest", "train_last_token",
]
