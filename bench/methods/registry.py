"""Finding methods: the built-in ones by scanning this package, others through entry points.

A built-in method is a concrete ``Method`` subclass that sets ``name`` in its own class body,
in any module of ``bench.methods``; its card is ``methods/<name>.toml``. An installed
package adds a method with an entry point in the group ``czsl_bench.methods`` (see
``bench.cards.METHOD_PLUGIN_GROUP``)::

    [project.entry-points."czsl_bench.methods"]
    my-csp = "my_package.my_csp:MyCSP"

whose class subclasses ``Method`` (e.g. ``bench.methods.csp.CSP``) and whose card is
``my-csp.toml`` next to ``my_package/my_csp.py``. Methods are listed in the order of their
cards' ``order`` key (cards without one come last), then by name.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import pkgutil
from pathlib import Path

from bench.cards import load_card, method_plugins
from bench.errors import BenchError
from bench.methods.base import Method


def _declares_method(value: object, module_name: str) -> bool:
    """Whether ``value`` is a concrete method class named in its own body in ``module_name``."""
    return (
        isinstance(value, type)
        and issubclass(value, Method)
        and value.__module__ == module_name
        and "name" in vars(value)
        and not inspect.isabstract(value)
    )


@functools.cache
def _builtin_methods() -> dict[str, type[Method]]:
    found: dict[str, type[Method]] = {}
    for info in pkgutil.iter_modules([str(Path(__file__).parent)], f"{__package__}."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if _declares_method(value, module.__name__):
                if value.name in found:
                    raise ValueError(f"method {value.name!r} defined twice")
                found[value.name] = value
    return found


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@functools.cache
def _plugin_method(name: str) -> type[Method]:
    entry_point = method_plugins()[name]
    where = f"method plugin {name!r} ({entry_point.value})"
    if name in _builtin_methods():
        raise BenchError(f"{where} has the name of a built-in method; rename its entry point")
    try:
        cls = entry_point.load()
    except Exception as exc:  # noqa: BLE001 - any import-time failure of foreign code
        raise BenchError(f"{where} failed to import: {_one_line(exc)}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise BenchError(f"{where} is not a subclass of bench.methods.Method")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise BenchError(f"{where} is abstract: it does not implement {missing}")
    own_name = vars(cls).get("name")
    if own_name is not None and own_name != name:
        raise BenchError(f"{where} sets name = {own_name!r}; it must match the entry point")
    cls.name = name
    load_card("methods", name)  # a missing or broken card fails here, in one line
    return cls


def _order(name: str) -> tuple[float, str]:
    return float(load_card("methods", name).get("order", math.inf)), name


def method_names() -> list[str]:
    """Names of all methods, built-in and installed, in their cards' order.

    Raises:
        BenchError: An installed method plugin is broken (one line saying how).
    """
    plugins = method_plugins()
    for name in plugins:
        _plugin_method(name)
    return sorted([*_builtin_methods(), *plugins], key=_order)


def get_method_class(name: str) -> type[Method]:
    """Return the class of method ``name`` or raise a one-line BenchError."""
    builtin = _builtin_methods()
    if name in builtin:
        return builtin[name]
    if name in method_plugins():
        return _plugin_method(name)
    known = sorted(builtin, key=_order) + sorted(set(method_plugins()) - set(builtin))
    raise BenchError(f"unknown method {name!r}; known: {', '.join(known)}")
