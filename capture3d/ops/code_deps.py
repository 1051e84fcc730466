"""The code a DVC stage depends on: the import closure of its module inside the capture3d package.

Input: a module name (``capture3d.stages.sfm``) and the package root folder. Output: the sorted
repository-relative paths (``capture3d/tasks/sfm/reconstruct.py``, package ``__init__.py`` files included) of
every capture3d module it imports, directly or through other capture3d modules, at module level or
inside functions (a stage's ``run`` may import lazily; DVC must still see a change there). Imports
are read from the source with :mod:`ast`; nothing is imported or executed.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

PACKAGE = "capture3d"


def _module_file(root: Path, module: str) -> Path | None:
    """The file of ``module`` (a .py file or a package's __init__.py) under ``root``, or None."""
    parts = module.split(".")
    base = root.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _imported(path: Path, module: str) -> set[str]:
    """capture3d module names that ``path`` (the source of ``module``) imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing package
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return {m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")}


def import_closure(module: str, root: Path) -> list[str]:
    """Repository-relative paths of ``module`` and every capture3d module it reaches (see module doc)."""
    root = Path(root)
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(root, name)
        if path is None:
            continue  # an attribute imported from a module, not a module itself
        seen[name] = path
        parents = name.split(".")
        todo.extend(".".join(parents[:k]) for k in range(1, len(parents)))  # packages' __init__ run too
        todo.extend(_imported(path, name))
    return sorted(str(path.relative_to(root)) for path in seen.values())
