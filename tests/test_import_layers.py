"""The package's imports form layers: a module imports only from layers below its own, so no
import runs back up and there is no cycle (read from the sources, nothing is imported)."""

import ast
import functools
import os

from .conftest import ROOT

PACKAGE = os.path.join(ROOT, "lite_detr")

# top-level parts of lite_detr (subpackages and modules), bottom layer first; a part may import
# only from lower layers. The model is below its persistence: modeling never imports the
# checkpointer (the VariantTag it saves lives in modeling/variant_tag.py).
LAYERS = [
    {"<root>", "utils"},
    {"ops"},
    {"layers"},
    {"modeling"},
    {
        "checkpoint",
        "data",
        "deploy",
        "evaluation",
        "export",
        "imagenet_weights",
        "model_zoo",
        "precision",
        "released_weights",
        "solver",
    },
    {"config"},
    {"engine"},
]
RANK = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def module_name(path):
    name = os.path.relpath(path, ROOT)[: -len(".py")].replace(os.sep, ".")
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


@functools.lru_cache(maxsize=1)
def import_graph():
    """{module: the lite_detr modules it imports}, ``from pkg import submodule`` as an edge to
    the submodule."""
    paths = {}
    for folder, _, files in os.walk(PACKAGE):
        paths.update({module_name(os.path.join(folder, f)): os.path.join(folder, f) for f in files})
    paths = {m: p for m, p in paths.items() if p.endswith(".py")}
    graph = {}
    for module, path in paths.items():
        package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
        with open(path) as f:
            tree = ast.parse(f.read(), filename=path)
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                for a in node.names:
                    targets.add(base + "." + a.name if base + "." + a.name in paths else base)
        graph[module] = {t for t in targets if t in paths and t != module}
    return graph


def part(module):
    names = module.split(".")
    return names[1] if len(names) > 1 else "<root>"


def test_every_part_of_the_package_has_a_layer():
    parts = {part(m) for m in import_graph()}
    assert parts <= set(RANK), f"add {sorted(parts - set(RANK))} to LAYERS"


def test_imports_only_run_down_the_layers():
    upward = [
        f"{m} imports {t}"
        for m, targets in import_graph().items()
        for t in targets
        if part(m) != part(t) and RANK[part(m)] <= RANK[part(t)]
    ]
    assert not upward, upward
    # the layering the model needs: it does not depend on persistence
    graph = import_graph()
    assert not any(
        part(t) == "checkpoint" for m in graph if part(m) == "modeling" for t in graph[m]
    )


def test_no_import_cycle():
    graph = import_graph()
    state = {}  # module -> "open" while on the stack, "done" after

    def visit(module, stack):
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycle = stack[stack.index(target) :] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, stack + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
