"""One writing convention in `kernels/`, `pixelrefer_fast/`, `bench/` and `tests/`: Markdown in docstrings and comments.

- Code in docstrings and comments is in single backticks (`x`), as in Markdown; no reStructuredText
  double backticks and no `::` literal-block markers.
- Section rulers in comments are dashes (`# ---- name`), never `# ====`.

`python -m tests.test_conventions --fix [PATH ...]` rewrites files to the convention (default: the four
folders): double backticks become single, `word::` at the end of a docstring line becomes `word:`, `=`
rulers become dashes. String literals that are not docstrings are left alone.
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("kernels", "pixelrefer_fast", "bench", "tests")
DOUBLE_BACKTICKS = re.compile(r"``([^`]+?)``")
LITERAL_BLOCK = re.compile(r"([^\s:])::[ \t]*$", re.MULTILINE)
EQUALS_RULER = re.compile(r"#(\s*)(={4,})")
RULES = {
    "double backticks (write `x`, Markdown)": re.compile(r"``[^`]"),
    "a `::` literal-block marker (end the line with `:`)": LITERAL_BLOCK,
}


def python_files(paths=None) -> list[Path]:
    paths = [ROOT / folder for folder in FOLDERS] if not paths else [Path(p) for p in paths]
    return sorted(f for p in paths for f in (p.rglob("*.py") if p.is_dir() else [p]))


def docstring_nodes(tree: ast.AST) -> list[ast.Expr]:
    """The docstring statements of the module, its classes and its functions."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                found.append(first)
    return found


def comments(source: str):
    """`(line, column, text)` of every comment."""
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            yield tok.start[0], tok.start[1], tok.string


def convention_problems(source: str, name: str) -> list[str]:
    problems = []
    texts = [(node.lineno, node.value.value) for node in docstring_nodes(ast.parse(source))]
    texts += [(line, text) for line, _, text in comments(source)]
    for line, text in texts:
        for rule, pattern in RULES.items():
            if pattern.search(text):
                problems.append(f"{name}:{line}: {rule}")
    for line, _, text in comments(source):
        if EQUALS_RULER.match(text):
            problems.append(f"{name}:{line}: an `=` ruler (rulers are `# ----`)")
    return problems


def fix_source(source: str) -> str:
    """`source` with its docstrings and comments rewritten to the convention."""
    lines = source.splitlines(keepends=True)
    for node in docstring_nodes(ast.parse(source)):
        first, last = node.lineno, node.end_lineno
        block = "".join(lines[first - 1 : last])
        block = LITERAL_BLOCK.sub(r"\1:", DOUBLE_BACKTICKS.sub(r"`\1`", block))
        lines[first - 1 : last] = block.splitlines(keepends=True)
    for line, column, _ in comments("".join(lines)):
        text = lines[line - 1]
        comment = DOUBLE_BACKTICKS.sub(r"`\1`", text[column:])
        comment = EQUALS_RULER.sub(lambda m: "#" + m.group(1) + "-" * len(m.group(2)), comment, count=1)
        lines[line - 1] = text[:column] + comment
    return "".join(lines)


def test_one_convention_in_docstrings_and_comments():
    problems = []
    for path in python_files():
        problems += convention_problems(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert not problems, "run `python -m tests.test_conventions --fix`:\n" + "\n".join(problems)


CASES = [
    pytest.param('"""Uses `x` and `y`."""\n# ---- section\n', [], id="markdown"),
    pytest.param('"""Uses ``x``."""\n', ["m.py:1: double backticks (write `x`, Markdown)"], id="rest-backticks"),
    pytest.param('"""Spans ``a\nb``."""\n', ["m.py:1: double backticks (write `x`, Markdown)"], id="rest-backticks-two-lines"),
    pytest.param(
        'def f():\n    """Example::\n\n        f()\n    """\n',
        ["m.py:2: a `::` literal-block marker (end the line with `:`)"],
        id="rest-block",
    ),
    pytest.param('"""Run::\n\n    f()\n"""\n', ["m.py:1: a `::` literal-block marker (end the line with `:`)"], id="rest-block-module"),
    pytest.param("x = 1  # ``x``\n", ["m.py:1: double backticks (write `x`, Markdown)"], id="comment"),
    pytest.param("# ==== section\n", ["m.py:1: an `=` ruler (rulers are `# ----`)"], id="equals-ruler"),
    pytest.param('x = "``not a docstring``"\n', [], id="string-literal"),
]


@pytest.mark.parametrize("source, expected", CASES)
def test_convention_problems(source, expected):
    assert convention_problems(source, "m.py") == expected


@pytest.mark.parametrize("source, expected", CASES)
def test_fix_source_follows_the_convention(source, expected):
    fixed = fix_source(source)
    assert convention_problems(fixed, "m.py") == []
    assert fix_source(fixed) == fixed
    if not expected:
        assert fixed == source


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.test_conventions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fix", action="store_true", help="rewrite the files instead of listing the problems")
    parser.add_argument("paths", nargs="*", help="files or folders (default: pixelrefer_fast, bench, tests)")
    args = parser.parse_args(argv)
    problems = []
    for path in python_files(args.paths):
        source = path.read_text(encoding="utf-8")
        if args.fix:
            fixed = fix_source(source)
            if fixed != source:
                path.write_text(fixed, encoding="utf-8")
                print(f"fixed {path}")
        else:
            problems += convention_problems(source, str(path))
    print("\n".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
