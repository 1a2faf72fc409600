"""Every "§" and file reference in the code's docstrings and comments resolves inside the repository.

- A section reference names its document: `docs/spec.md §5.3`, `docs/spec.md §4 and §14.9`,
  `docs/spec.md §2.1, §14.5`. It resolves when the document exists and has that section: a heading
  numbered `5.3` (`### 5.3 ...`), or item `9` of the numbered list under the heading `## 14.`. In a
  Markdown file a bare `§N` means a section of that file. An informal citation of the specification
  (`spec section 6`, `spec 14.2`, `Spec 10.10/14.7`, `spec §5.3`) is read as `docs/spec.md` and its
  sections must exist there too.
- A file reference is a path to a source or document file (`.py`, `.md`, `.sh`, `.toml`) with a
  folder (`bench/gate.py`, `docs/spec.md`) or without (`varlen.py`, `README.md`). It resolves when a
  file of the repository has that path: from the repository root, from the citing file's folder, or
  as the tail of a longer path (`profiling/sample.py`). Paths into the official PixelRefer repository
  (`pixelrefer/...`, `pixelreferlite/...`, `PixelRefer/...`, described in docs/spec.md §0) are
  references to that repository and are not looked up here. Data files (`config.json`,
  `OUT/results.json`) are mostly files of a checkpoint or outputs of a run, and are not checked.
"""

from __future__ import annotations

import ast
import io
import os
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE_FOLDERS = ("pixelrefer_fast", "kernels", "bench", "tests")
SKIPPED_FOLDERS = {"build", "dist", "node_modules", "__pycache__"}
# Top-level folders of the official repository (docs/spec.md §0): `pixelrefer/`, `pixelreferlite/` and
# the repository folder `PixelRefer/` itself.
OFFICIAL_ROOTS = ("pixelrefer", "pixelreferlite", "PixelRefer")

SECTION = r"§\s?(\d+(?:\.\d+)*)"
SECTION_RE = re.compile(SECTION)
# `docs/spec.md §5.3`, `docs/spec.md §4 and §14.9`, `docs/spec.md §2.1, §14.5, §14.8`
CITATION_RE = re.compile(r"(?P<doc>[\w./-]+\.md)\s*(?P<sections>" + SECTION + r"(?:(?:\s*,\s*and\s+|\s*,\s*|\s+and\s+)" + SECTION + r")*)")
SPEC_DOCUMENT = "docs/spec.md"
NUMBER = r"(?:§\s?)?\d+(?:\.\d+)*"
# `spec section 6`, `spec 14.2`, `Spec 10.10/14.7`, `spec §5.3`, `spec section 1 and 4`
INFORMAL_RE = re.compile(
    r"\b[Ss]pec(?:ification)?\s+(?:section\s+)?(?P<sections>" + NUMBER + r"(?:(?:\s*[/,]\s*|\s+and\s+)" + NUMBER + r")*)"
)
PATH_RE = re.compile(r"(?<![\w./-])(?:[\w.-]*\w/)*[\w.-]*\w\.(?:py|md|sh|toml)\b")


def repository_files() -> list[str]:
    """Paths of the repository's files, relative to the root, `/`-separated (hidden and build folders skipped)."""
    files = []
    for folder, subfolders, names in os.walk(ROOT):
        subfolders[:] = [d for d in subfolders if not (d.startswith(".") or d in SKIPPED_FOLDERS or d.endswith(".egg-info"))]
        files += [(Path(folder) / name).relative_to(ROOT).as_posix() for name in names if not name.startswith(".")]
    return sorted(files)


def sections_of(markdown: str) -> set[str]:
    """The section numbers of a Markdown document: numbered headings, and numbered list items under them."""
    found: set[str] = set()
    current = None
    for line in markdown.splitlines():
        heading = re.match(r"#{1,6}\s+(\d+(?:\.\d+)*)\.?\s", line)
        if heading:
            current = heading.group(1)
            found.add(current)
            continue
        if line.startswith("#"):
            current = None
            continue
        item = re.match(r"(\d+)\.\s", line)
        if item and current is not None:
            found.add(f"{current}.{item.group(1)}")
    return found


def comments_and_docstrings(path: Path) -> list[tuple[int, str]]:
    """`(line, text)` of every comment and every module, class and function docstring of a Python file."""
    source = path.read_text(encoding="utf-8")
    texts = [(tok.start[0], tok.string) for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                texts.append((first.lineno, first.value.value))
    return texts


class Resolver:
    """Looks references up among `files` (repository-relative paths)."""

    def __init__(self, files: list[str], read=lambda rel: (ROOT / rel).read_text(encoding="utf-8")):
        self.files = set(files)
        self.read = read
        self._sections: dict[str, set[str]] = {}

    def find_file(self, reference: str, folder: str) -> str | None:
        """The repository file `reference` names, seen from `folder` (None when there is none)."""
        reference = reference.removeprefix("./")
        for candidate in (reference, f"{folder}/{reference}" if folder else reference):
            if candidate in self.files:
                return candidate
        tails = sorted(f for f in self.files if f.endswith("/" + reference))
        return tails[0] if tails else None

    def sections(self, document: str) -> set[str]:
        if document not in self._sections:
            self._sections[document] = sections_of(self.read(document))
        return self._sections[document]

    def section_problems(self, text: str, folder: str, own_markdown: str | None = None) -> list[str]:
        """Unresolvable `§` references of `text`. `own_markdown`: the Markdown file `text` comes from."""
        problems = []
        cited = set()
        for citation in INFORMAL_RE.finditer(text):
            cited.update(m.start() for m in SECTION_RE.finditer(text, citation.start("sections"), citation.end("sections")))
            for number in re.findall(r"\d+(?:\.\d+)*", citation.group("sections")):
                if SPEC_DOCUMENT in self.files and number not in self.sections(SPEC_DOCUMENT):
                    problems.append(f"{citation.group(0)!r}: {SPEC_DOCUMENT} has no section {number}")
                elif SPEC_DOCUMENT not in self.files:
                    problems.append(f"{citation.group(0)!r}: no file {SPEC_DOCUMENT} in the repository")
        for citation in CITATION_RE.finditer(text):
            cited.update(m.start() for m in SECTION_RE.finditer(text, citation.start("sections"), citation.end("sections")))
            document = self.find_file(citation.group("doc"), folder)
            if document is None:
                problems.append(f"{citation.group(0)!r}: no file {citation.group('doc')} in the repository")
                continue
            for number in SECTION_RE.findall(citation.group("sections")):
                if number not in self.sections(document):
                    problems.append(f"{citation.group(0)!r}: {document} has no section {number}")
        for bare in SECTION_RE.finditer(text):
            if bare.start() in cited:
                continue
            if own_markdown is None:
                problems.append(f"{bare.group(0)!r} does not name its document (write e.g. 'docs/spec.md {bare.group(0)}')")
            elif bare.group(1) not in self.sections(own_markdown):
                problems.append(f"{bare.group(0)!r}: {own_markdown} has no section {bare.group(1)}")
        return problems

    def file_problems(self, text: str, folder: str) -> list[str]:
        """Unresolvable file references of `text` (a Python comment or docstring)."""
        problems = []
        for match in PATH_RE.finditer(text):
            reference = match.group(0)
            if reference.split("/", 1)[0] in OFFICIAL_ROOTS and "/" in reference:
                continue
            if self.find_file(reference, folder) is None:
                problems.append(f"{reference!r}: no such file in the repository")
        return problems


def reference_problems() -> list[str]:
    files = repository_files()
    resolver = Resolver(files)
    problems = []
    for rel in files:
        folder = rel.rpartition("/")[0]
        if rel.endswith(".md"):
            text = resolver.read(rel)
            problems += [f"{rel}: {p}" for p in resolver.section_problems(text, folder, own_markdown=rel)]
        elif rel.endswith(".py") and rel.split("/", 1)[0] in CODE_FOLDERS:
            for line, text in comments_and_docstrings(ROOT / rel):
                found = resolver.section_problems(text, folder) + resolver.file_problems(text, folder)
                problems += [f"{rel}:{line}: {p}" for p in found]
    return problems


def test_every_reference_resolves():
    problems = reference_problems()
    assert not problems, f"{len(problems)} unresolved references:\n" + "\n".join(problems)


SPEC = "# Spec\n\n## 3. Crops\n\n### 3.2 Lite\n\n## 14. Details\n\n1. one\n2. two\n\n## 15 Other\n"
FILES = ["docs/spec.md", "bench/gate.py", "pixelrefer_fast/profiling/sample.py", "kernels/varlen.py"]


@pytest.fixture
def resolver():
    return Resolver(FILES, read=lambda rel: SPEC)


def test_sections_of():
    assert sections_of(SPEC) == {"3", "3.2", "14", "14.1", "14.2", "15"}


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param("see docs/spec.md §3.2.", [], id="heading"),
        pytest.param("(docs/spec.md §3, §14.2 and §15)", [], id="list"),
        pytest.param("(docs/spec.md §3.3)", ["'docs/spec.md §3.3': docs/spec.md has no section 3.3"], id="no-section"),
        pytest.param("(docs/spec.md §14.3)", ["'docs/spec.md §14.3': docs/spec.md has no section 14.3"], id="no-item"),
        pytest.param("(spec.md §3)", [], id="tail-of-path"),
        pytest.param("(notes/CONTRACT.md §3)", ["'notes/CONTRACT.md §3': no file notes/CONTRACT.md in the repository"], id="no-file"),
        pytest.param("as in §3.2", ["'§3.2' does not name its document (write e.g. 'docs/spec.md §3.2')"], id="bare"),
        pytest.param("the spec §3.2, spec section 14.1 and spec 3/15", [], id="informal"),
        pytest.param("(Spec 14.1/14.5)", ["'Spec 14.1/14.5': docs/spec.md has no section 14.5"], id="informal-no-section"),
    ],
)
def test_section_references(resolver, text, expected):
    assert resolver.section_problems(text, folder="pixelrefer_fast") == expected


def test_bare_section_in_markdown_refers_to_itself(resolver):
    assert resolver.section_problems("as in §14.1", folder="docs", own_markdown="docs/spec.md") == []
    assert resolver.section_problems("as in §7", folder="docs", own_markdown="docs/spec.md") == [
        "'§7': docs/spec.md has no section 7"
    ]


@pytest.mark.parametrize(
    "text, folder, expected",
    [
        pytest.param("measured by bench/gate.py", "tests", [], id="from-root"),
        pytest.param("the port in varlen.py", "kernels", [], id="same-folder"),
        pytest.param("see profiling/sample.py", "bench", [], id="tail"),
        pytest.param("upstream pixelrefer/model/region_encoder.py", "kernels", [], id="official"),
        pytest.param("reads config.json", "pixelrefer_fast", [], id="checkpoint-file"),
        pytest.param("writes OUT/results.json", "bench", [], id="output-file"),
        pytest.param("https://example.org/a/b.py", "bench", [], id="url"),
        pytest.param("by notes/CONTRACT.md", "pixelrefer_fast", ["'notes/CONTRACT.md': no such file in the repository"], id="missing"),
        pytest.param("as pixelrefer_arch.py", "kernels", ["'pixelrefer_arch.py': no such file in the repository"], id="bare-missing"),
    ],
)
def test_file_references(resolver, text, folder, expected):
    assert resolver.file_problems(text, folder) == expected
