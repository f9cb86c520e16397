import torch

# Tiny models run fastest on one thread; two threads fight over two cores with pytest itself.
torch.set_num_threads(1)
