"""Lite DETR for Detectron2: interleaved multi-scale encoder and key-aware deformable attention."""

__version__ = "0.1.0"
