"""The package's shape (ARCHITECTURE.md): only ``missu_keras/cli/`` parses arguments, no
module imports the package root, the package imports no module of itself in a cycle,
and ``missu-keras --help`` answers without loading TensorFlow.

Imports are read from the source (every ``import`` statement, at module level or inside
a function), so a cycle that only closes at run time is caught too.
"""

import ast
import pathlib
import re
import subprocess
import sys
import sysconfig

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "missu_keras"


def module_name(path):
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_names(path):
    """(line, absolute module name) of every import statement in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
            if len(submodules) < len(node.names):  # names defined in `base` itself
                yield node.lineno, base
            for name in submodules:  # `from missu_keras.data import io` imports a module
                yield node.lineno, name


def internal_graph():
    graph = {}
    for name, path in MODULES.items():
        targets = set()
        for _, target in imported_names(path):
            # importing missu_keras.a.b runs missu_keras/__init__ and missu_keras/a/__init__ too
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in MODULES and prefix != name and not name.startswith(prefix + "."):
                    targets.add(prefix)
        graph[name] = targets
    return graph


def test_only_the_cli_package_parses_arguments():
    offenders = [f"{path.relative_to(REPO)}:{line}" for name, path in MODULES.items()
                 if not name.startswith("missu_keras.cli")
                 for line, target in imported_names(path) if target == "argparse"]
    assert offenders == [], f"argparse imported outside missu_keras/cli/: {offenders}"


def test_no_module_imports_the_package_root():
    offenders = [f"{path.relative_to(REPO)}:{line}" for name, path in MODULES.items()
                 if name != "missu_keras"
                 for line, target in imported_names(path) if target == "missu_keras"]
    assert offenders == [], f"modules importing the package root: {offenders}"


def test_no_import_cycle():
    graph = internal_graph()
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def architecture_layers():
    """``{path pattern: layer}`` from the table in ARCHITECTURE.md (``cli/`` a folder,
    ``export.py`` a module, both relative to ``missu_keras/``)."""
    text = (REPO / "ARCHITECTURE.md").read_text()
    layers = {}
    for layer, modules in re.findall(r"^\| (\d+) \| ([^|]*) \|", text, re.M):
        for pattern in re.findall(r"`([^`]+)`", modules):
            layers[pattern] = int(layer)
    return layers


def layer_of(module, layers):
    """The layer of the most specific table entry naming ``module``, or None."""
    path = "/".join(module.split(".")[1:])
    best = None
    for pattern, layer in layers.items():
        if pattern in (f"{path}.py", f"{path}/__init__.py", f"{path}/"):
            return layer
        if pattern.endswith("/") and path.startswith(pattern) and (
                best is None or len(pattern) > len(best[0])):
            best = (pattern, layer)
    return best[1] if best else None


def test_imports_follow_the_layers():
    layers = architecture_layers()
    assert layers["cli/"] == 7 and layers["config.py"] == 0  # the table was read
    graph = internal_graph()
    unplaced = sorted(m for m in graph if m != "missu_keras" and layer_of(m, layers) is None)
    assert unplaced == [], f"modules missing from the ARCHITECTURE.md layer table: {unplaced}"
    upward = [f"{m} ({layer_of(m, layers)}) -> {t} ({layer_of(t, layers)})"
              for m, targets in sorted(graph.items()) if m != "missu_keras"
              for t in sorted(targets)
              if t != "missu_keras" and layer_of(t, layers) > layer_of(m, layers)]
    assert upward == [], "imports against the layers of ARCHITECTURE.md: " + "; ".join(upward)


def test_layer_check_catches_an_upward_import():
    layers = architecture_layers()
    assert layer_of("missu_keras.weights.publishing", layers) == 5
    assert layer_of("missu_keras.weights.download", layers) == 3
    assert layer_of("missu_keras.data.io", layers) == 1
    assert layer_of("missu_keras.export", layers) > layer_of("missu_keras.inference.pipeline", layers)


def test_the_graph_sees_imports():
    """The checks above would pass vacuously on a parser that found nothing."""
    graph = internal_graph()
    assert "missu_keras.config" in graph["missu_keras.models.backbone"]
    assert "missu_keras.data.io" in graph["missu_keras.scoring"]


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["predict", "--help"],
                                  ["export", "--help"], ["synth", "brats", "--help"],
                                  ["view", "--help"], ["postprocess", "choose", "--help"]])
def test_help_does_not_load_tensorflow(argv):
    """The installed console script, with Python's import log: TensorFlow and Keras are
    never imported for --help, and nothing of TensorFlow's start-up log is printed."""
    script = pathlib.Path(sysconfig.get_path("scripts")) / "missu-keras"
    if not script.is_file():
        pytest.skip(f"the console script is not installed at {script} (pip install -e .)")
    proc = subprocess.run([sys.executable, "-X", "importtime", str(script), *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage: missu-keras" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0]
                for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "missu_keras" in imported  # the log is read correctly
    assert not imported & {"tensorflow", "keras"}, sorted(imported & {"tensorflow", "keras"})
    assert "oneDNN" not in proc.stderr and "cuda" not in proc.stderr.lower()


def test_help_through_python_dash_m_does_not_load_tensorflow():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "missu_keras.cli", "--help"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0]
                for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "missu_keras" in imported and not imported & {"tensorflow", "keras"}
