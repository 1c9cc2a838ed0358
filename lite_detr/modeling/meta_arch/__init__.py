"""The detectors (meta-architectures) and their shared base :class:`TwoStageDeformableDETR`.

A Lite DETR detector is one of these with the interleaved encoder: a config choice, not a class
(``projects/*/configs/models/lite_*_r50.py``). LazyConfig builds them with ``L(DINO)(...)``.
"""

from .deformable_detr import DeformableDETR
from .dino import DINO
from .h_detr import HDETR
from .two_stage import TwoStageDeformableDETR, VariantTag

__all__ = ["DINO", "DeformableDETR", "HDETR", "TwoStageDeformableDETR", "VariantTag"]

# The names of the Lite* subclasses these once had: the config.yaml a run saved before they were
# dropped names them as `_target_`, and such a file must still load (evaluate, resume, demo).
LiteDINO = DINO
LiteDeformableDETR = DeformableDETR
LiteHDETR = HDETR
