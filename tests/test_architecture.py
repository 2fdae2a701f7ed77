"""The shape of the house (DESIGN.md section 3, docs/architecture.md), read from the source with ast.

Import edges count wherever the import statement sits (module level or inside a function), because a
lazy import still ties two rooms together. Edges into a package's ``__init__`` are skipped: it only
re-exports its rooms.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bids_phydiff"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imported(name: str, path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(modules of the package, top-level names of third-party packages) imported by one module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    ours, theirs = set(), set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                (ours if alias.name in known else theirs).add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if not base.startswith("bids_phydiff"):
                theirs.add(base.split(".")[0])
                continue
            for alias in node.names:
                target = f"{base}.{alias.name}"
                ours.add(target if target in known else base)
    ours = {m for m in ours if m in known and m != name and not known_init(m)}
    return ours, {t.split(".")[0] for t in theirs}


def known_init(name: str) -> bool:
    return (PACKAGE.parent / Path(*name.split(".")) / "__init__.py").is_file()


@pytest.fixture(scope="module")
def graph() -> dict[str, tuple[set[str], set[str]]]:
    sources = _sources()
    known = set(sources)
    return {name: _imported(name, path, known) for name, path in sources.items()}


def test_no_import_circles(graph):
    remaining = {name: set(ours) for name, (ours, _) in graph.items()}
    while remaining:  # Kahn: peel off modules that import nothing left
        leaves = [name for name, deps in remaining.items() if not deps & remaining.keys()]
        if not leaves:
            circle = sorted(remaining)
            pytest.fail(f"import circle among: {', '.join(circle)}")
        for leaf in leaves:
            del remaining[leaf]


def test_every_module_is_short_enough():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_data_flows_one_way_from_the_command_line(graph):
    for name, (ours, _) in graph.items():
        room = name.split(".")[1] if name.count(".") else ""
        for target in ours:
            target_room = target.split(".")[1]
            if target_room == "cli":
                assert room == "cli", f"{name} imports {target}: nothing imports from cli/"
            if target_room == "workflows":
                assert room in ("cli", "workflows"), f"{name} imports {target}: only cli/ drives workflows/"


@pytest.mark.parametrize("room, forbidden", [
    ("prep", {"torch", "nipype"}),
    ("bids", {"torch"}),
    ("phantom", {"torch", "nipype"}),
    ("eval", {"nipype"}),
    ("model", {"nipype", "bids", "nibabel"}),
])
def test_rooms_know_nothing_of_what_they_should_not(graph, room, forbidden):
    for name, (_, theirs) in graph.items():
        if name.startswith(f"bids_phydiff.{room}.") or name == f"bids_phydiff.{room}":
            assert not theirs & forbidden, f"{name} imports {sorted(theirs & forbidden)}"
