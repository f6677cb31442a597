"""Fine-tuning one of our weights files on a user's own classes (`vitconvert finetune`, `vitconvert.finetune`).

data (the images and their classes), augment (the training crops), model (the new head), recipe (optimiser,
schedule, loss), distributed (torchrun's processes), checkpoint (resuming), plot (the curves), finetune (the
loop that ties them together).
"""
