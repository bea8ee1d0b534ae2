"""A readable surface (issue 9): no module over 400 lines and no function over 60, unless the README's
package map says why; `ALLOWED` below is that list, each entry with its reason.

Sizes are read from the source with `ast` (nothing is imported): a module's lines as `str.splitlines`
counts them, a function's as `end_lineno - lineno + 1` (from its `def` line to its last line, so its
docstring and nested functions count, its decorators do not). Methods and nested functions are named
by their dotted path, e.g. `ToyPipeline.__call__`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "ditguide"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

MIRRORS_DIFFUSERS = (
    "mirrors the diffusers __call__ it stands in for line by line (the transformer calls keyword for keyword, "
    "which the guidance engine relies on), and the file is a DVC dependency of a trained testbed model"
)
# (module path under src/ditguide, function's dotted name or None for the module itself) -> why it stays long.
ALLOWED = {
    ("toy/pipeline.py", "ToyPipeline.__call__"): MIRRORS_DIFFUSERS,  # FluxPipeline; train_scenes
    ("toy/video_pipeline.py", "ToyVideoPipeline.__call__"): MIRRORS_DIFFUSERS,  # WanPipeline; train_toy_t2v
}


def function_sizes(tree: ast.AST, prefix: str = "") -> dict[str, int]:
    """{dotted name: lines} of every function and method in `tree`, nested ones included."""
    out = {}
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[prefix + node.name] = node.end_lineno - node.lineno + 1
            out.update(function_sizes(node, f"{prefix}{node.name}."))
        elif isinstance(node, ast.ClassDef):
            out.update(function_sizes(node, f"{prefix}{node.name}."))
        else:
            out.update(function_sizes(node, prefix))
    return out


def sizes() -> dict[tuple[str, str | None], int]:
    """{(module path, function or None): lines} of every module and function of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        source = path.read_text(encoding="utf-8")
        out[(rel, None)] = len(source.splitlines())
        for name, lines in function_sizes(ast.parse(source)).items():
            out[(rel, name)] = lines
    return out


def over_limit(key: tuple[str, str | None], lines: int) -> bool:
    return lines > (MAX_MODULE_LINES if key[1] is None else MAX_FUNCTION_LINES)


def test_the_measure_counts_def_to_last_line_and_names_methods():
    tree = ast.parse(
        "class A:\n    def f(self):\n        def g():\n            pass\n        return 1\n\n\ndef h():\n    pass\n"
    )
    assert function_sizes(tree) == {"A.f": 4, "A.f.g": 2, "h": 2}


def test_no_module_over_400_lines_and_no_function_over_60():
    found = {key: lines for key, lines in sizes().items() if over_limit(key, lines) and key not in ALLOWED}
    assert not found, (
        "over the limit (split by job, or add to ALLOWED and the README's package map with the reason): "
        + ("; ".join(f"{path} {name or '(module)'}: {lines} lines" for (path, name), lines in sorted(found.items())))
    )


def test_every_exception_is_needed_and_explained_in_the_readme():
    """An exception that is no longer over the limit is removed; each one is named in the package map."""
    measured = sizes()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    package_map = re.search(r"^## Package map\n(.*?)^## ", readme, re.S | re.M).group(1)
    for path, name in ALLOWED:
        assert (path, name) in measured, f"{path} {name}: not found; remove it from ALLOWED"
        assert over_limit((path, name), measured[(path, name)]), f"{path} {name}: within the limit now; remove it"
        assert f"`{path}`" in package_map and f"`{name}`" in package_map, f"{path} {name}: not in the package map"
