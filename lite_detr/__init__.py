"""Lite DETR for Detectron2: interleaved multi-scale encoder and key-aware deformable attention."""

import warnings

__version__ = "0.1.0"

# fvcore (imported by detectron2) calls torch.jit.script on import, which this torch deprecates:
# a warning on every run that no user can act on. Importing lite_detr before detectron2 (every
# entry point does) installs the filter in time.
warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)
