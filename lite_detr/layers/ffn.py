"""Position-wise feed-forward network of transformer layers."""

import torch
from torch import nn

__all__ = ["FFN"]

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class FFN(nn.Module):
    """
    ``linear -> activation -> dropout -> linear``. Residual, output dropout and normalisation are
    the caller's, so the same module serves post-norm encoder and decoder layers.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        feedforward_dim: int = 1024,
        dropout: float = 0.0,
        activation: str = "relu",
    ):
        """
        Args:
            embed_dim (int): input and output channels C.
            feedforward_dim (int): hidden channels.
            dropout (float): dropout after the activation.
            activation (str): one of "relu", "gelu", "silu".
        """
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"Unknown FFN activation {activation!r}; expected one of {sorted(_ACTIVATIONS)}"
            )
        if embed_dim <= 0 or feedforward_dim <= 0:
            raise ValueError(
                f"FFN needs positive embed_dim and feedforward_dim, got {embed_dim} and "
                f"{feedforward_dim}"
            )
        self.embed_dim = embed_dim
        self.feedforward_dim = feedforward_dim
        self.linear1 = nn.Linear(embed_dim, feedforward_dim)
        self.activation = _ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(feedforward_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (Tensor): (..., C).

        Returns:
            Tensor: (..., C).
        """
        return self.linear2(self.dropout(self.activation(self.linear1(x))))
