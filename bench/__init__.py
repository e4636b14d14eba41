"""bench: a benchmark harness for compositional zero-shot learning (CZSL)."""

__version__ = "0.1.0"
