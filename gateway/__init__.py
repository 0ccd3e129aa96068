"""parcelbox gateway: ingest, store, photo pipeline, alert outbox and notifiers for parcelbox boxes."""

__version__ = "0.1.0"
