"""Transformer decoders of the DETR-family detectors."""

from .deformable_decoder import MLP, DeformableDecoder, DeformableDecoderLayer, box_sine_embedding

__all__ = ["MLP", "DeformableDecoder", "DeformableDecoderLayer", "box_sine_embedding"]
