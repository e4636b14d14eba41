"""CZSL methods: every ``Method`` subclass here with a ``name`` and a card in methods/, plus
those installed packages add through entry points (see ``bench.methods.registry``)."""

from bench.methods.base import FitContext, Method
from bench.methods.registry import get_method_class, method_names

__all__ = ["FitContext", "Method", "get_method_class", "method_names"]
