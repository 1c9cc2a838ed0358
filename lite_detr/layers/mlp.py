"""Multi-layer perceptron of DETR's box heads and query embeddings."""

import torch
from torch import Tensor, nn

__all__ = ["MLP"]


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU in between (DETR's box head)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x
