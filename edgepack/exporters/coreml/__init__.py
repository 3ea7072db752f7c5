"""Core ML (mlprogram): exporter, conversion paths, compression, static spec checks (graph reader for the ANE
placement check), metadata contract, and the iOS app templates."""
