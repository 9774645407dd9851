"""Compiled dataclass methods kept beside each module's bytecode.

A node's start went half into making its 211 dataclasses: Python 3.11's
``dataclasses`` writes the source of every ``__init__``, ``__repr__``,
``__eq__``, ``__hash__``, ``__setattr__`` and ``__delattr__`` and compiles
it anew in every process (about 1,000 ``compile()`` calls, 0.2 CPU s of the
0.5 s the node's imports took). Here the code objects are kept, as Python
keeps a module's bytecode: in ``__pycache__`` beside that module's ``.pyc``
(``NAME.cpython-311.dataclasses``, for the modules of ``peercrypt`` and
``actors`` only), keyed by the exact source text the standard library
wrote, and executed as the standard library executes it. A changed class is
a new text and compiled afresh; each save keeps only the texts the process
used. Nothing is written under ``PYTHONDONTWRITEBYTECODE`` (:func:`save`
writes anyway, for a build step such as the test suite's); a file that
cannot be read, or one of another Python, is ignored.

Installed by ``peercrypt/__init__.py`` on CPython 3.11 only: it reproduces
that version's ``dataclasses._create_fn`` (the text it compiles) line for
line; elsewhere nothing changes.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import importlib.util
import marshal
import os
import sys
from types import CodeType
from typing import Any

_PACKAGES = ("peercrypt", "actors")
_SUFFIX = ".dataclasses"
_HEADER = importlib.util.MAGIC_NUMBER

_module: list[str] = []  # the module of the class being made (stack: nested)
_loaded: dict[str, dict[str, CodeType]] = {}  # module -> text -> code, from its file
_used: dict[str, dict[str, CodeType]] = {}  # module -> what this process made
_missed: set[str] = set()  # modules with a text compiled here


def _cache_path(module: str) -> str | None:
    mod = sys.modules.get(module)
    source = getattr(mod, "__file__", None)
    if not source or not source.endswith(".py"):
        return None
    try:
        return importlib.util.cache_from_source(source)[: -len(".pyc")] + _SUFFIX
    except (NotImplementedError, ValueError):
        return None


def _read(path: str) -> dict[str, CodeType]:
    try:
        with open(path, "rb") as f:
            data = f.read()
        if not data.startswith(_HEADER):
            return {}
        # loads, not load(f): load reads a file a few bytes at a time (through
        # readinto), which took longer than the compiling it saves.
        table = marshal.loads(memoryview(data)[len(_HEADER) :])
    except (OSError, EOFError, ValueError, TypeError):
        return {}
    if not isinstance(table, dict):
        return {}
    return {k: v for k, v in table.items() if isinstance(k, str) and isinstance(v, CodeType)}


def _code(txt: str) -> CodeType:
    module = _module[-1] if _module else ""
    if module.partition(".")[0] not in _PACKAGES:
        return compile(txt, "<string>", "exec")
    if module not in _loaded:
        path = _cache_path(module)
        _loaded[module] = _read(path) if path else {}
    used = _used.setdefault(module, {})
    code = used.get(txt)
    if code is None:
        # Taken out of what was read: the table does not stay in memory
        # beside the functions made from it (only texts no class asked for).
        code = _loaded[module].pop(txt, None)
        if code is None:
            code = compile(txt, "<string>", "exec")  # as exec(txt) compiles it
            _missed.add(module)
        used[txt] = code
    return code


def _create_fn(
    name: str,
    args: Any,
    body: Any,
    *,
    globals: Any = None,
    locals: Any = None,
    return_type: Any = dataclasses.MISSING,
) -> Any:
    # CPython 3.11's dataclasses._create_fn, with the compiled text kept.
    if locals is None:
        locals = {}
    return_annotation = ""
    if return_type is not dataclasses.MISSING:
        locals["_return_type"] = return_type
        return_annotation = "->_return_type"
    args = ",".join(args)
    body = "\n".join(f"  {b}" for b in body)
    txt = f" def {name}({args}){return_annotation}:\n{body}"
    local_vars = ", ".join(locals.keys())
    txt = f"def __create_fn__({local_vars}):\n{txt}\n return {name}"
    ns: dict[str, Any] = {}
    exec(_code(txt), globals, ns)
    return ns["__create_fn__"](**locals)


def save(force: bool = False) -> None:
    """Write the cache of each module that compiled a text in this process
    (all modules it used with ``force``), unless ``PYTHONDONTWRITEBYTECODE``
    is set and not ``force``. Errors (a read-only install) are ignored."""
    if sys.dont_write_bytecode and not force:
        return
    for module in sorted(_used if force else _missed):
        path = _cache_path(module)
        if path is None:
            continue
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(_HEADER)
                marshal.dump(_used[module], f)
            os.replace(tmp, path)  # whole, or not at all, for a process reading it
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    _missed.clear()


def install() -> None:
    """Route this interpreter's dataclass method making through the cache
    (CPython 3.11 only; a second call changes nothing)."""
    if sys.implementation.name != "cpython" or sys.version_info[:2] != (3, 11):
        return
    process_class = dataclasses._process_class  # type: ignore[attr-defined]
    if getattr(process_class, "__peercrypt_cache__", False):
        return

    def _process_class(cls: type, *args: Any) -> Any:
        _module.append(cls.__module__)
        try:
            return process_class(cls, *args)
        finally:
            _module.pop()

    _process_class.__peercrypt_cache__ = True  # type: ignore[attr-defined]
    dataclasses._process_class = _process_class  # type: ignore[attr-defined]
    dataclasses._create_fn = _create_fn  # type: ignore[attr-defined]
    atexit.register(save)


def build(packages: tuple[str, ...] = _PACKAGES) -> None:
    """Import every module of ``packages`` and write their caches (a build
    step: the test suite runs it once, as it byte-compiles the package)."""
    import importlib
    import pkgutil

    for name in packages:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, f"{name}."):
            if not info.name.endswith(".__main__"):
                importlib.import_module(info.name)
    save(force=True)
