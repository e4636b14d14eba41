"""CZSL methods: each registers itself with ``@register_method`` and has a card in methods/."""

from bench.methods.base import FitContext, Method, get_method_class, method_names, register_method

__all__ = ["FitContext", "Method", "get_method_class", "method_names", "register_method"]
