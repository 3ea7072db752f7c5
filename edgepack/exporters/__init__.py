"""Exporters: one package per runtime (``onnx/`` holds the shared ONNX hub), each implementing
:class:`edgepack.exporters.base.Exporter` and declaring its :class:`~edgepack.exporters.base.Capabilities`;
:mod:`edgepack.exporters.registry` finds them through the ``edgepack.exporters`` entry-point group."""
