"""DINO-4scale, Swin-T: ``models/dino_r50.py`` with the Swin-T backbone (``models/swin_t.py``)."""

from .dino_r50 import model
from .swin_t import backbone, neck_input_shapes

model.backbone = backbone
model.neck.input_shapes = neck_input_shapes
