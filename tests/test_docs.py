"""The repository's documents stand on their own: every link, file path and file name they give
is a file of this checkout (or is listed below as one that is not: the user's files, other
projects' files), every link's anchor is a heading of its target, and the README's layout
paragraph names the folders."""

import fnmatch
import glob
import os
import re
import subprocess

from .conftest import ROOT


def tracked(*patterns):
    out = subprocess.run(
        ["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return out.stdout.split()


DOCS = tracked("*.md")  # README.md, docs/, projects/*/README.md, benchmarks/README.md

# Paths and file names the documents give that are not files of this repository, each group
# with its reason. A path matches when it starts with one of these (a folder ends with "/").
NOT_IN_REPOSITORY = {
    "the user's files, folders and placeholders": (
        "my_data/",
        "output/",
        "./output/",
        "./datasets",
        "$DETECTRON2_DATASETS/",
        ".venv/",
        "/path/to/",
        "/somewhere/",
        "/data/",
        "my_config.py",
    ),
    "files of the operating system the benchmarks read or run": ("/proc/self/", "/usr/bin/time"),
    "the example detector of docs/adding_a_detector.md": (
        "projects/my_detr/",
        "lite_my_detr_r50.py",
        "my_detr_r50_12ep.py",
    ),
    "files of the releases this project reproduces (named with their repository)": (
        "config/DINO/DINO_4scale.py",  # IDEA-Research/Lite-DETR, IDEA-Research/DINO
        "models/dino/",
        "main.py",
        "engine.py",
        "coco_transformer.py",
        "deformable_transformer.py",
        "tools/lazyconfig_train_net.py",  # detectron2's
        "configs/r50_deformable_detr_plus_iterative_bbox_refinement_plus_plus_two_stage.sh",
        "configs/two_stage/deformable-detr-hybrid-branch/",  # H-DETR's
    ),
}
EXCUSED = tuple(p for group in NOT_IN_REPOSITORY.values() for p in group)

URL = re.compile(r"\w+://\S+")
LINK = re.compile(r"\]\(([^)\s]+)\)")
# a token with a "/" in it: a path relative to the repository or to the document, or absolute
PATH = re.compile(r"(?<![\w.$/-])((?:\.\.?/)*/?[\w.*{}$,-]+(?:/[\w.*{},-]+)+/?)")
FILE_EXT = r"\.(?:py|md|sh|cpp|cu|cuh|h|txt|toml|png|json|yaml|pth|pkl|onnx|jpg)"
# a file name without a folder: it must be the name of some file of the checkout
NAME = re.compile(r"(?<![\w./$-])([\w*{},-]+\.(?:py|sh|cpp|cu|cuh|h|md|toml|txt))\b(?![/\w])")


def expand_braces(text):
    """``a_{12,36}ep.py`` -> ``a_12ep.py``, ``a_36ep.py`` (as a shell would)."""
    m = re.search(r"\{([^{}]*)\}", text)
    if not m:
        return [text]
    alternatives = m.group(1).split(",")
    return [x for a in alternatives for x in expand_braces(text[: m.start()] + a + text[m.end() :])]


def exists(path, doc):
    """True when ``path`` (globs and braces allowed) names files of the checkout, relative to
    its root or to the document's folder; an absolute path, or one that leaves the checkout, never
    does."""
    if path.startswith("/"):
        return False
    for alternative in expand_braces(path):
        fulls = [
            os.path.normpath(os.path.join(base, alternative))
            for base in (ROOT, os.path.join(ROOT, os.path.dirname(doc)))
        ]
        if not any(os.path.commonpath([f, ROOT]) == ROOT and glob.glob(f) for f in fulls):
            return False
    return True


def slug(heading):
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path):
    with open(os.path.join(ROOT, path)) as f:
        text = re.sub(r"```.*?```", "", f.read(), flags=re.S)
    return {slug(h) for h in re.findall(r"^#+ (.*)$", text, flags=re.M)}


def read(doc):
    with open(os.path.join(ROOT, doc)) as f:
        return f.read()


def test_every_link_resolves_to_a_file_and_heading():
    broken = []
    for doc in DOCS:
        for target in LINK.findall(read(doc)):
            if "://" in target or target.startswith("mailto:"):
                continue
            path, _, anchor = target.partition("#")
            full = os.path.normpath(os.path.join(os.path.dirname(doc), path)) if path else doc
            if path.startswith("/") or not exists(full, ""):
                broken.append(f"{doc} -> {target}: no such file in the repository")
            elif anchor and full.endswith(".md") and anchor not in anchors(full):
                broken.append(f"{doc} -> {target}: no heading #{anchor} in {full}")
    assert not broken, "\n".join(broken)


def test_every_path_and_file_name_the_docs_give_exists():
    top_level = {p.split("/")[0] for p in tracked()}
    names = {os.path.basename(p) for p in tracked()}
    missing = []
    for doc in DOCS:
        text = URL.sub(" ", read(doc))
        for token in PATH.findall(text):
            token = token.rstrip(".,")
            first = token.split("/")[0]
            is_path = (
                re.search(FILE_EXT + "$", token)
                or token.endswith("/")
                or token.startswith("/")
                or first in top_level
                or first in (".", "..")
            )
            if is_path and not token.startswith(EXCUSED) and not exists(token, doc):
                missing.append(f"{doc}: {token}")
        for name in NAME.findall(text):
            if re.fullmatch(r"_\d+ep\.py", name) or name.startswith(EXCUSED):
                continue  # "[_36ep](...)": the name before it, another schedule
            if not all(fnmatch.filter(names, n) for n in expand_braces(name)):
                missing.append(f"{doc}: {name} (no file of that name)")
    assert (
        not missing
    ), "named in the docs but not in the repository (or in NOT_IN_REPOSITORY):\n" + (
        "\n".join(sorted(set(missing)))
    )


def test_the_layout_map_names_files_of_each_folder():
    """docs/layout.md: each line names a folder, and each file named on it is in that folder."""
    text = read("docs/layout.md").split("```")[1]
    folder, wrong = None, []
    for line in text.splitlines():
        head = re.match(r"^(\S+/)\s", line)
        if head:
            folder = "" if head.group(1) == "./" else head.group(1)
        for name in re.findall(r"\b[\w-]+\.(?:py|sh|cpp|cu|h|md)\b", line):
            if folder is not None and not os.path.exists(os.path.join(ROOT, folder, name)):
                wrong.append(f"{folder}{name}")
    assert not wrong, f"docs/layout.md names files that are not in their folder: {wrong}"


def test_readme_layout_names_the_folders():
    """The README's layout paragraph names every top-level folder and every package of
    lite_detr/ (the module-by-module map is docs/layout.md)."""
    section = read("README.md").split("## Layout\n", 1)[1].split("\n## ", 1)[0]
    files = tracked()
    folders = {p.split("/")[0] + "/" for p in files if "/" in p and not p.startswith(".")}
    packages = {
        p.split("/")[1] + "/" for p in files if p.count("/") >= 2 and p[:10] == "lite_detr/"
    }
    named = set(re.findall(r"`([\w.]+/)`", section))
    assert folders <= named, f"folders missing from the README's layout: {folders - named}"
    assert packages <= named, f"packages missing from the README's layout: {packages - named}"
    assert "docs/layout.md" in section


def test_sources_cite_only_documents_of_the_checkout():
    """A docstring or comment that sends the reader to a document names one of this checkout
    (the design notes it was written from are outside it and must not be cited)."""
    written = ("output/", "gpu_check.md", "report.md")  # reports the tools and tests write
    others = ("datasets/README.md",)  # detectron2's, named as such
    names = {os.path.basename(p) for p in tracked()}
    wrong = []
    for path in tracked("*.py", "*.cpp", "*.h", "*.cu", "*.cuh", "*.sh", "Makefile", "*.toml"):
        if path == "tests/test_docs.py":
            continue
        for cited in re.findall(r"(?<![\w./-])([\w./-]*\.md)\b", read(path)):
            if cited.startswith(written + others):
                continue
            if not (exists(cited, path) if "/" in cited else cited in names):
                wrong.append(f"{path}: {cited}")
    assert not wrong, wrong
