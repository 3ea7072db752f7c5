"""The ONNX hub every other exporter starts from: the hub export (:mod:`.hub`), the shared shape of exporters
that convert it in-process (:mod:`.exporter`), its graph reader for placement (:mod:`.graph`) and its
deployment-contract container (:mod:`.contract`). Not a runtime itself: no entry point."""
