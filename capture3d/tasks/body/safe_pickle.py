"""Read SMPL-family ``.pkl`` files (model files, SMPLify's ``gmm_08.pkl``) without running their code.

Inputs: the path of a pickle written by Python 2 or 3.
Outputs: a ``dict`` of numpy arrays; strings, numbers and other plain values are kept as they are.

Unpickling calls whatever importable callable the file names, so a model file downloaded from
anywhere could run any code. :class:`_ModelUnpickler` resolves only the globals that the official
files need and refuses every other one, before anything is called, with a one-line
:class:`BodyModelError` naming the file and the global. What it resolves:

* numpy's array, scalar and dtype reconstruction (``numpy.core`` in old files, ``numpy._core`` in
  numpy 2 ones; ``_frombuffer`` for protocol-5 pickles);
* ``chumpy.ch.Ch`` and scipy's ``csc_matrix`` (``scipy.sparse.csc`` / ``scipy.sparse._csc``), the
  classes SMPL files store arrays in, as small stand-ins defined here: neither library is imported
  or needed. chumpy's ``Ch.__getstate__`` pickles the object's ``__dict__`` less its caches, the
  value under ``'x'``; a ``csc_matrix`` pickles its ``__dict__`` (``data``, ``indices``,
  ``indptr``, ``_shape``, or ``shape`` in old scipy). Both become dense numpy arrays. Other chumpy
  classes are expressions (``Select``, ``add`` ...) and are refused rather than evaluated;
* ``copy_reg._reconstructor`` (protocol 0/1 pickles of new-style objects), only to build those
  stand-ins; ``set`` and ``object`` (a ``Ch``'s state holds a set; ``object`` is the
  reconstructor's base), and ``_codecs.encode(text, 'latin1')``, which Python 3 writes for
  ``bytes`` in protocol 0-2 pickles.

Python 2 byte strings are read as Latin-1 (numpy turns them back into the array bytes).
"""

from __future__ import annotations

import _codecs
import logging
import pickle
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from capture3d.tasks.body.errors import BodyModelError

logger = logging.getLogger(__name__)


class _Sealed(type):
    """Metaclass of the stand-ins: a file cannot set attributes on the classes themselves."""

    def __setattr__(cls, name: str, value: Any) -> None:
        raise AttributeError(f"{cls.__name__} is read-only")

    def __delattr__(cls, name: str) -> None:
        raise AttributeError(f"{cls.__name__} is read-only")


class _StandIn(metaclass=_Sealed):
    """Holds the pickled state of an object of a library that is not imported; no behaviour."""

    __slots__ = ("state",)
    source = ""  # the global this stands in for (set per subclass in its class body)

    def __new__(cls, *args: Any, **kwargs: Any) -> _StandIn:
        obj = object.__new__(cls)
        object.__setattr__(obj, "state", {})
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __setstate__(self, state: Any) -> None:
        # pickle's BUILD: a dict, or (dict or None, slot dict)
        merged: dict[Any, Any] = {}
        parts = state if isinstance(state, tuple) else (state,)
        for part in parts:
            if part is None:
                continue
            if not isinstance(part, dict):
                raise TypeError(f"{self.source} state is a {type(part).__name__}, not a dict")
            merged.update(part)
        object.__setattr__(self, "state", merged)


class _ChStandIn(_StandIn):
    __slots__ = ()
    source = "chumpy.ch.Ch"


class _CscStandIn(_StandIn):
    __slots__ = ()
    source = "scipy.sparse.csc_matrix"


class _Refused(Exception):
    """Internal: a global or call the file may not use (turned into BodyModelError with the path)."""


class _Guarded:
    """A callable wrapper without attributes a file could overwrite (pickle's BUILD on it fails)."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Any) -> None:
        object.__setattr__(self, "_fn", fn)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("read-only")

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` restricted to the stand-ins (``object.__new__(cls)``)."""
    if not (isinstance(cls, type) and issubclass(cls, _StandIn) and base is object and state is None):
        what = getattr(cls, "__name__", type(cls).__name__)
        raise _Refused(f"copyreg._reconstructor building '{what}'")
    return cls()


def _latin1_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3 writes it for ``bytes`` in protocol 0-2: Latin-1 text only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused("_codecs.encode with anything but Latin-1 text")
    return _codecs.encode(text, "latin1")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    reconstruct = np.zeros(1).__reduce__()[0]  # numpy(._)core.multiarray._reconstruct
    scalar = np.float64(0).__reduce__()[0]  # numpy(._)core.multiarray.scalar
    frombuffer = np.arange(2).__reduce_ex__(5)[0]  # numpy(._)core.numeric._frombuffer
    table: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        table[(f"{core}.multiarray", "scalar")] = scalar
        table[(f"{core}.numeric", "_frombuffer")] = _Guarded(frombuffer)
    return table


_ALLOWED: MappingProxyType[tuple[str, str], Any] = MappingProxyType(
    {
        **_numpy_globals(),
        ("chumpy.ch", "Ch"): _ChStandIn,
        ("scipy.sparse.csc", "csc_matrix"): _CscStandIn,
        ("scipy.sparse._csc", "csc_matrix"): _CscStandIn,
        ("copy_reg", "_reconstructor"): _Guarded(_reconstructor),
        ("copyreg", "_reconstructor"): _Guarded(_reconstructor),
        ("__builtin__", "set"): set,
        ("builtins", "set"): set,
        ("__builtin__", "object"): object,
        ("builtins", "object"): object,
        ("_codecs", "encode"): _Guarded(_latin1_encode),
    }
)


class _ModelUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` resolves only :data:`_ALLOWED`."""

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise _Refused(f"{module}.{name}")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("a persistent id")


def _dense_csc(obj: _CscStandIn, label: str) -> np.ndarray:
    """A csc_matrix stand-in's state -> dense (rows, cols) array."""
    st = obj.state
    shape = st.get("_shape", st.get("shape"))
    try:
        data = np.asarray(st["data"])
        indices = np.asarray(st["indices"], dtype=np.int64)
        indptr = np.asarray(st["indptr"], dtype=np.int64)
        rows, cols = (int(n) for n in shape)
    except (KeyError, TypeError, ValueError) as e:
        raise BodyModelError(
            f"{label} holds a sparse matrix without data/indices/indptr/shape ({type(e).__name__}: {e})"
        ) from None
    if (
        indptr.shape != (cols + 1,)
        or data.shape != indices.shape
        or data.ndim != 1
        or indptr[-1] != len(data)
        or np.any(np.diff(indptr) < 0)
        or (len(indices) and (indices.min() < 0 or indices.max() >= rows))
    ):
        raise BodyModelError(f"{label} holds an inconsistent sparse {rows}x{cols} matrix")
    dense = np.zeros((rows, cols), dtype=data.dtype)
    col_of = np.repeat(np.arange(cols), np.diff(indptr))  # (nnz,)
    np.add.at(dense, (indices, col_of), data)
    return dense


def _plain(obj: Any, label: str, depth: int = 0) -> Any:
    """Replace stand-ins by numpy arrays, recursively through dicts, lists and tuples."""
    if depth > 50:
        raise BodyModelError(f"{label} is nested too deeply to be a model file")
    if isinstance(obj, _ChStandIn):
        if "x" not in obj.state:
            raise BodyModelError(f"{label} holds a chumpy object without its 'x' array")
        return np.asarray(_plain(obj.state["x"], label, depth + 1))
    if isinstance(obj, _CscStandIn):
        return _dense_csc(obj, label)
    if isinstance(obj, dict):
        return {k: _plain(v, label, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v, label, depth + 1) for v in obj)
    return obj


def _refusal(label: str, what: str) -> BodyModelError:
    if what.startswith("chumpy."):
        return BodyModelError(
            f"{label} refused: it references '{what}', a chumpy expression this loader does not "
            "evaluate (only plain chumpy.ch.Ch arrays); re-save the model with numpy arrays (.npz)"
        )
    if "." in what and " " not in what:
        return BodyModelError(f"{label} refused: it references '{what}', which a model file has no reason to contain")
    return BodyModelError(f"{label} refused: it uses {what}, which a model file has no reason to contain")


def safe_load_pickle(path: str | Path, *, what: str = "model file") -> dict[str, Any]:
    """The dict pickled in ``path``, with chumpy / scipy-sparse arrays turned into numpy arrays.

    Raises :class:`BodyModelError` when the file is missing, is not a pickle of a dict, or
    references anything beyond numpy arrays and the stand-ins (see the module docstring). ``what``
    names the file's role in messages (``model file 'x.pkl' refused: ...``)."""
    path = Path(path)
    label = f"{what} '{path}'"
    if not path.is_file():
        raise BodyModelError(f"{label} does not exist")
    try:
        with path.open("rb") as f:
            loaded = _ModelUnpickler(f, encoding="latin1").load()
    except _Refused as e:
        raise _refusal(label, str(e)) from None
    except BodyModelError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt or truncated file: any error of the allowed constructors
        msg = " ".join(str(e).split())[:200]
        raise BodyModelError(f"{label} is not a readable pickle ({type(e).__name__}: {msg})") from None
    if not isinstance(loaded, dict):
        raise BodyModelError(f"{label} holds a {type(loaded).__name__}, not a dict of arrays")
    result = _plain(loaded, label)
    logger.debug("read %s: %s", path, ", ".join(map(str, result)))
    return result
