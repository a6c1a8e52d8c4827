"""Every figure in the READMEs' tables comes from a results file: a check, not a promise.

    python benchmarks/check_figures.py            # README.md and benchmarks/README.md; exit 1 on a stray figure

Each table is preceded (within the lines since the previous table) by a marker naming where its figures come
from, paths relative to benchmarks/:

    <!-- figures: results/tiny_cpu.json results/tiny_ablation_guides.json -->
    <!-- figures: none (configuration, no measurements) -->

Every bare number in a table's body must then equal, at the precision it is printed with, a number in one of
the named jsons (any depth; numbers inside json strings such as error messages count too), or that number
x100 (a percentage), or /1e3, /1e6 before "KB", "MB". Configuration values (frame counts, overrides,
thresholds) are written as `code` and not checked; so are names such as wan14b or H200 (a number glued to
letters before it). A figure kept in a README before its run exists must be listed in PENDING with the reason,
and its cell must say "to be re-measured".
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks"
READMES = (ROOT / "README.md", ROOT / "benchmarks" / "README.md")
MARKER = re.compile(r"<!--\s*figures:\s*(.*?)\s*-->")
NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?([A-Za-z]*)(\s?(?:KB|MB)\b)?")
GLUED_UNITS = {"", "x", "s", "px", "dB", "GiB", "GB", "B"}  # other letters glued to a number make it a name
SCALES = {"KB": 1e3, "MB": 1e6}
# (README name, printed figure) -> why it stays without a results file; the cell must say "to be re-measured"
PENDING: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Table:
    """One markdown table: where it starts, the jsons its marker names (None: no marker), its body rows."""

    readme: Path
    line: int
    sources: list[str] | None
    rows: list[tuple[int, list[str]]]


def tables(readme: Path) -> Iterator[Table]:
    """The tables of a README with the marker written since the previous table (outside code fences)."""
    sources: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    start, fenced = 0, False
    lines = readme.read_text().splitlines()
    for number, line in enumerate([*lines, ""], 1):
        if line.startswith("```"):
            fenced = not fenced
        is_row = not fenced and line.startswith("|")
        if is_row:
            start = start or number
            rows.append((number, [c.strip() for c in line.strip().strip("|").split("|")]))
            continue
        if rows:
            yield Table(readme, start, sources, rows[2:])  # header and separator are not figures
            rows, start, sources = [], 0, None
        found = MARKER.search(line)
        if found and not fenced:
            sources = [] if found.group(1).startswith("none") else found.group(1).split()


def numbers_in(value) -> Iterator[float]:
    """Every number in a json value: numeric leaves, and numbers written inside strings."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield float(value)
    elif isinstance(value, str):
        yield from (float(m.replace(",", "")) for m in re.findall(r"\d+(?:\.\d+)?", value))
    elif isinstance(value, dict):
        for item in value.values():
            yield from numbers_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from numbers_in(item)


def figures(cell: str) -> Iterator[tuple[str, float, int, float]]:
    """(printed text, value, decimals, unit scale) of each bare number in a cell, code spans removed."""
    text = re.sub(r"`[^`]*`", " ", cell).replace("**", "")
    for match in NUMBER.finditer(text):
        whole, fraction, glued, unit = match.group(1), match.group(2) or "", match.group(3), match.group(4)
        if glued not in GLUED_UNITS:
            continue  # a name such as wan1.3b or 14b, not a figure
        scale = SCALES.get((unit or "").strip(), 1.0)
        yield whole + fraction, float(whole.replace(",", "") + fraction), max(len(fraction) - 1, 0), scale


def backed(value: float, decimals: int, scale: float, known: list[float]) -> bool:
    """Some known number, as a plain value or a percentage (and in the cell's unit), prints as `value`."""
    tolerance = 0.5 * 10 ** -decimals + 1e-9 * max(abs(value), 1.0)
    return any(abs(k / scale - value) <= tolerance or abs(100 * k - value) <= tolerance for k in known)


def check(readmes: tuple[Path, ...] = READMES) -> list[str]:
    """One line per problem: a table without a marker, a missing json, a figure no named json holds."""
    problems = []
    for readme in readmes:
        for table in tables(readme):
            where = f"{readme.relative_to(ROOT)}:{table.line}"
            if table.sources is None:
                problems.append(f"{where}: table without a <!-- figures: ... --> marker")
                continue
            known: list[float] = []
            for source in table.sources:
                path = RESULTS / source
                if not path.is_file():
                    problems.append(f"{where}: {source} does not exist")
                    continue
                known.extend(numbers_in(json.loads(path.read_text())))
            if not table.sources:
                continue
            for line, cells in table.rows:
                for cell in cells:
                    for printed, value, decimals, scale in figures(cell):
                        if backed(value, decimals, scale, known):
                            continue
                        if (readme.name, printed) in PENDING and "to be re-measured" in cell:
                            continue
                        problems.append(f"{readme.relative_to(ROOT)}:{line}: {printed} ({cell!r}) is in none of "
                                        f"{', '.join(table.sources)}")
    return problems


def main() -> None:
    problems = check()
    for problem in problems:
        print(problem)
    count = sum(len(t.rows) for r in READMES for t in tables(r) if t.sources)
    print(f"{len(problems)} problem(s); {count} table rows checked against benchmarks/results/")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
