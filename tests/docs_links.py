#!/usr/bin/env python3
"""Checks that what the README, the CHANGELOG and docs/ point at exists.

- every relative Markdown link resolves to a file, and its #anchor to a heading
  of that file (GitHub's slugs);
- every `make <target>` they name is a target of the Makefile;
- every repository path they name in backticks (extension/…, tests/…, bench/…)
  exists.

Run from anywhere: python3 tests/docs_links.py. Prints one line per problem and
a closing line; exits 1 when anything is missing.
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
PATH_ROOTS = ("extension/", "api/", "tests/", "bench/", "scripts/", "docs/", "clients/", "web/", ".ci/")

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`]+)`")
MAKE = re.compile(r"(?:^|[\s;(])make ((?:[A-Z_]+=\S+ )*)([a-z][a-z0-9-]*)")


def slug(heading: str) -> str:
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
    found, seen = set(), {}
    in_fence = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        if not in_fence and line.startswith("#"):
            base = slug(line.lstrip("#"))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def make_targets() -> set[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        m = re.match(r"^([a-z][a-z0-9 -]*):(?!=)", line)
        if m:
            targets.update(m.group(1).split())
    return targets


def code_texts(text: str):
    """Inline code spans and the lines of fenced code blocks."""
    in_fence = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        if in_fence:
            yield line
        else:
            yield from CODE_SPAN.findall(line)


def main() -> int:
    problems = []
    targets = make_targets()
    checked = 0
    for doc in DOCS:
        text = doc.read_text()
        name = doc.relative_to(ROOT)
        for target in LINK.findall(text):
            if re.match(r"^[a-z]+:", target):
                continue
            checked += 1
            file_part, _, anchor = target.partition("#")
            dest = (doc.parent / file_part).resolve() if file_part else doc
            if not dest.exists():
                problems.append(f"{name}: link to a missing file: {target}")
                continue
            if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{name}: link to a missing heading: {target}")
        for code in code_texts(text):
            for _, target in MAKE.findall(code):
                checked += 1
                if target not in targets:
                    problems.append(f"{name}: `make {target}` is not a Makefile target")
            for word in re.split(r"[\s,()]+", code):
                word = word.rstrip(".:;")
                if not word.startswith(PATH_ROOTS) or any(c in word for c in "*<>{}$…"):
                    continue
                checked += 1
                if not (ROOT / word).exists():
                    problems.append(f"{name}: names a missing path: {word}")
    for problem in problems:
        print(problem)
    print(f"docs: {checked - len(problems)} passed, {len(problems)} failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
