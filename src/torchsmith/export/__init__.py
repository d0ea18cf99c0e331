"""Export for deployment: ONNX or ``torch.export`` ``.pt2``, proven equal to the PyTorch model.

See :func:`export` and ``docs/export.md``.
"""

from torchsmith.export.exporter import FORMATS, ExportError, ExportReport, OutputCheck, export

__all__ = ["FORMATS", "ExportError", "ExportReport", "OutputCheck", "export"]
