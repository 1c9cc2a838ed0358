"""The repository's documents stand on their own: no citation of files outside it, and every
relative link of a Markdown file points to a file of the checkout."""

import os
import re
import subprocess

from .conftest import ROOT


def tracked(*patterns):
    out = subprocess.run(
        ["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def test_no_citation_of_files_outside_the_repository():
    offenders = []
    for path in tracked("*.py", "*.md", "*.cpp", "*.cu", "*.h", "Makefile", "*.sh", "*.toml"):
        if path == "tests/test_docs.py":  # the patterns below
            continue
        with open(os.path.join(ROOT, path), errors="replace") as f:
            text = f.read()
        offenders += [f"{path}: {m}" for m in re.findall(r"shared/design|LITE_DETR\.md", text)]
    assert not offenders


def test_markdown_links_resolve():
    broken = []
    for path in tracked("*.md"):
        with open(os.path.join(ROOT, path)) as f:
            text = f.read()
        for target in re.findall(r"\]\(([^)#\s]+)\)", text):
            if "://" in target:
                continue
            if not os.path.exists(os.path.join(ROOT, os.path.dirname(path), target)):
                broken.append(f"{path} -> {target}")
    assert not broken


def test_readme_layout_names_every_module_and_script():
    """The README's layout section lists the library's modules and the scripts as they are: each
    file it names exists, and each module of lite_detr/ and script of tools/ and benchmarks/ is
    named."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    section = readme.split("## Layout\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"[\w.]+\.(?:py|sh|md|cpp)\b", section))
    files = tracked()
    basenames = {os.path.basename(p) for p in files}
    assert not named - basenames, f"named in the layout but not in the tree: {named - basenames}"
    expected = {
        os.path.basename(p)
        for p in files
        if p.endswith((".py", ".sh"))
        and p.startswith(("lite_detr/", "tools/", "benchmarks/"))
        and not p.endswith("__init__.py")
    }
    assert not expected - named, f"missing from the README's layout: {sorted(expected - named)}"
