"""Transformer decoders of two-stage deformable DETRs."""

from .deformable_decoder import POSITIONAL_QUERIES, DeformableDecoder, DeformableDecoderLayer

__all__ = ["DeformableDecoder", "DeformableDecoderLayer", "POSITIONAL_QUERIES"]
