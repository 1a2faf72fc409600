"""Kernels run in Triton 3.6's interpreter with numpy >= 2.4 (the GPU machine's versions).

That interpreter holds scalars (kernel int arguments, loaded values, program ids) as one-element arrays
and takes `int()` of them at `range()` bounds, which numpy >= 2.4 refuses. Our kernels pass every
runtime bound through `_triton.loop_bound`; this check keeps it so (CI's Triton is newer and would not
notice).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

KERNELS = Path(__file__).resolve().parents[2] / "kernels"


def _is_jit(node: ast.FunctionDef) -> bool:
    return any("jit" in ast.unparse(d) for d in node.decorator_list)


def _static(expr: ast.expr) -> bool:
    """A bound the interpreter gives as a Python int: a literal, a constexpr (UPPER_CASE) or loop_bound(...)."""
    if isinstance(expr, ast.Constant):
        return True
    if isinstance(expr, ast.Name):
        return expr.id.isupper()
    if isinstance(expr, ast.Call):
        return ast.unparse(expr.func).split(".")[-1] == "loop_bound"
    if isinstance(expr, ast.BinOp):
        return _static(expr.left) and _static(expr.right)
    if isinstance(expr, ast.UnaryOp):
        return _static(expr.operand)
    return False


def _range_bounds():
    for path in sorted(KERNELS.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef) or not _is_jit(function):
                continue
            for loop in ast.walk(function):
                if isinstance(loop, ast.For) and isinstance(loop.iter, ast.Call):
                    name = ast.unparse(loop.iter.func)
                    if name in ("range", "tl.range"):
                        for arg in loop.iter.args:
                            yield f"{path.name}:{loop.lineno} {function.name}", arg


@pytest.mark.parametrize("where, bound", list(_range_bounds()), ids=lambda v: v if isinstance(v, str) else "")
def test_range_bounds_are_interpreter_safe(where, bound):
    assert _static(bound), f"{where}: range bound {ast.unparse(bound)!r}: wrap it in loop_bound(...)"
