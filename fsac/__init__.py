"""fsac: CLIP-FSAC few-shot anomaly classification from workstation to factory line.

The root package holds only torch-free pieces shared by every part of the toolchain:
errors, atomic file writes, image preprocessing and the model-file format. Training
(`fsac.train`), export (`fsac.export`), calibration (`fsac.calibration`) and the edge
runtime (`fsac.runtime`) build on them.
"""

__version__ = "0.1.0"
