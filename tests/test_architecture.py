"""The architecture as a test: no import cycles, a web-free engine, and arrows that only point down.

Every module of engine/ and game/ is parsed with `ast` (nothing is imported or
run); every import counts, at any depth (imports inside functions too, which is
where the factory and the CLI keep theirs). Relative imports are resolved, and
`from game import x` means the module game.x when x is a submodule. The checks:

  (a) no import cycle between modules (the failure names the cycle);
  (b) no engine/ module imports game, Flask or a Flask extension: the engine is
      a library the game uses, usable from a notebook or a benchmark;
  (c) no upward arrow in the layer table below: a module imports only from its
      own layer or from a lower one. Layers of equal rank are siblings and do
      not import each other;
  (d) process entry points are leaves: the worker loop is imported by the
      command that runs it, nobody else (heartbeats live in their own module).

The layers, bottom to top:

  0 engine      CLIP, VQGAN, the scorer, weights: no web code, no game rules.
  1 domain      the game's own rules and settings, each a plain module at the
                top of game/: config (settings), errors (AdminError), puzzles
                (puzzle days), players (ids, nicknames), hints, photos (photo
                targets), judge (the CLIP that scores, and its weights). They
                use the engine and each other, never Redis plumbing above them.
  2 store       game.store: all state in Redis (the Store, targets, the
                embedded redis-server, backups, the Lua scripts).
  3 service     game.service: the game a player talks to (drafts, submissions,
                boards, message validation) over the store and the judge; and
                game.rooms, Play with friends over the same (it uses game.service);
                game.explain (and game.explain_process, its child process), why
                a caption scored what it did.
  3 generation  game.generation: the job queue, heartbeats, the generation
                service and the worker process. A sibling of the game service.
  4 web         game.web: Flask blueprints over the service, the store and the
                generation side (admin pages, /readyz).
  4 cli         game.cli: `flask` commands over the domain, store and
                generation. A sibling of the web layer.
  5 factory     game (game/__init__.py): create_app wires everything; nothing
                in the package imports it.

A new module must be placed in the table (the test names any module that is
in no layer), which is the moment to decide where it belongs.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "game")

# (layer, rank, modules: a module belongs to the layer of the longest entry it equals or lies under)
LAYERS = [
    ("engine", 0, ("engine",)),
    ("domain", 1, ("game.config", "game.errors", "game.puzzles", "game.players", "game.hints", "game.photos",
                   "game.judge", "game.history",  # game.history: streak, percentile and carry-code rules
                   "game.gc_pauses",  # the process's garbage-collector pauses, frozen start-up objects
                   "game.skeleton")),  # nickname look-alike skeletons (arrives with branch fix/names)
    ("store", 2, ("game.store",)),
    ("service", 3, ("game.service", "game.rooms",  # the daily game and Play with friends
                    "game.explain",  # why a caption scored that (word effects, heatmaps)
                    "game.explain_process")),  # ... computed in a niced child process the judge pauses
    ("generation", 3, ("game.generation",)),
    ("web", 4, ("game.web",)),
    ("cli", 4, ("game.cli",)),
    ("factory", 5, ("game",)),
]
# Entry points (a process's main module) and the only modules that may import them.
LEAVES = {"game.generation.worker": ("game.cli",)}
ENGINE_MAY_NOT_IMPORT = ("game", "flask", "flask_sock", "werkzeug")


# -- reading the code -----------------------------------------------------------

def discover(root: Path = ROOT, packages=PACKAGES) -> dict[str, Path]:
    """{dotted module name: file} for every .py file of the packages."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imports_of(source: str, module: str, is_package: bool, known: set[str]) -> list[tuple[str, int]]:
    """(imported name, line) for every import in `source`, resolved to a module of `known` when it is one.

    Names outside `known` (the standard library, Flask, ...) are kept as written,
    so the engine check can see them.
    """
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((_known_prefix(alias.name, known), node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                if candidate in known:  # `from game import hints`: the module game.hints
                    found.append((candidate, node.lineno))
                else:  # a name defined in `base`
                    found.append((_known_prefix(base, known), node.lineno))
    return found


def _known_prefix(name: str, known: set[str]) -> str:
    """The longest known module `name` equals or lies under (`import game.store.server` -> game.store.server)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return name


def import_graph(root: Path = ROOT) -> tuple[dict[str, set[str]], dict[tuple[str, str], int], dict[str, set[str]]]:
    """(module -> internal modules it imports, (from, to) -> first line, module -> external names it imports)."""
    modules = discover(root)
    known = set(modules)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    lines: dict[tuple[str, str], int] = {}
    external: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for name, line in imports_of(path.read_text(encoding="utf-8"), module, path.name == "__init__.py", known):
            if name in known:
                if name != module:
                    graph[module].add(name)
                    lines.setdefault((module, name), line)
            else:
                external[module].add(name)
    return graph, lines, external


# -- the checks -------------------------------------------------------------------

def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One concrete cycle per strongly connected component with more than one module, e.g. [a, b, c, a]."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def connect(node: str) -> None:  # Tarjan's algorithm; the graphs are small, recursion is fine
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycle_in(graph, set(c), c[0]) for c in components]


def _cycle_in(graph: dict[str, set[str]], members: set[str], start: str) -> list[str]:
    """A shortest path start -> ... -> start inside one component (breadth first)."""
    previous = {start: None}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in members:
                continue
            if nxt == start:
                path = []
                while node is not None:
                    path.append(node)
                    node = previous[node]
                return path[::-1] + [start]
            if nxt not in previous:
                previous[nxt] = node
                queue.append(nxt)
    return [start, start]


def modules_file(module: str) -> str:
    """game.store.server -> game/store/server.py (or .../__init__.py), for messages."""
    path = ROOT.joinpath(*module.split("."))
    return str((path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).relative_to(ROOT))


def layer_of(module: str, layers=LAYERS) -> tuple[str, int] | None:
    best = None
    for name, rank, prefixes in layers:
        for prefix in prefixes:
            if module == prefix or (module.startswith(prefix + ".") and prefix != "game"):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), name, rank)
    return None if best is None else (best[1], best[2])


def upward_arrows(graph: dict[str, set[str]], layers=LAYERS) -> list[tuple[str, str, str]]:
    """(importer, imported, 'a (layer) -> b (layer)') for every import that goes up or into a sibling layer."""
    bad = []
    for source in sorted(graph):
        for target in sorted(graph[source]):
            s, t = layer_of(source, layers), layer_of(target, layers)
            if s is None or t is None:
                continue  # reported by the "in no layer" check
            if s[0] != t[0] and t[1] >= s[1]:
                bad.append((source, target, f"{source} ({s[0]}) -> {target} ({t[0]})"))
    return bad


# -- the tests ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_every_module_is_in_a_layer(graph):
    missing = [m for m in sorted(graph[0]) if layer_of(m) is None]
    assert not missing, f"modules in no layer of tests/test_architecture.py LAYERS: {missing}"


def test_no_import_cycles(graph):
    cycles = find_cycles(graph[0])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_engine_imports_neither_game_nor_flask(graph):
    _, _, external = graph
    bad = sorted(f"{m} imports {name}" for m in graph[0] if m == "engine" or m.startswith("engine.")
                 for name in external[m] | graph[0][m] if name.split(".")[0] in ENGINE_MAY_NOT_IMPORT)
    assert not bad, "engine/ must stay a library:\n" + "\n".join(bad)


def test_the_product_never_imports_the_test_harness(graph):
    """harness/ and tests/ serve the tests and benchmarks; the game and the engine ship without them."""
    _, _, external = graph
    bad = sorted(f"{m} imports {name}" for m in graph[0] for name in external[m]
                 if name.split(".")[0] in ("harness", "tests", "bench", "pytest"))
    assert not bad, "product code imports test code:\n" + "\n".join(bad)


def test_imports_only_point_down_the_layers(graph):
    modules, lines, _ = graph
    bad = [f"{arrow}  ({modules_file(source)} line {lines[source, target]})"
           for source, target, arrow in upward_arrows(modules)]
    assert not bad, "imports against the layer table:\n" + "\n".join(bad)


def test_entry_points_are_leaves(graph):
    modules = graph[0]
    bad = [f"{source} imports {leaf}" for leaf, allowed in LEAVES.items() for source in sorted(modules)
           if leaf in modules[source] and not any(source == a or source.startswith(a + ".") for a in allowed)]
    assert not bad, "process entry points are imported:\n" + "\n".join(bad)


def test_the_new_layout_is_what_the_graph_sees(graph):
    """The walker sees imports inside functions and `from game import x` as game.x (else the checks prove nothing)."""
    modules = graph[0]
    assert {"game.judge", "game.service", "game.web.pages", "game.cli"} <= modules["game"]  # inside create_app
    assert "game.store.server" in modules["game.generation.worker"]  # `from game.store import Store, server`
    assert "game.generation.heartbeats" in modules["game.web.ops"]
    assert "game.generation.worker" not in modules["game.web.ops"]


# -- the checks can fail ---------------------------------------------------------------

def test_cycle_finder_reports_a_cycle_on_a_synthetic_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    two = find_cycles({"x": {"y"}, "y": {"x"}, "p": {"q"}, "q": {"r"}, "r": {"q"}})
    assert sorted(two) == [["q", "r", "q"], ["x", "y", "x"]]


def test_resolver_on_synthetic_sources():
    known = {"game", "game.hints", "game.store", "game.store.server", "game.store.targets", "engine", "engine.scorer"}
    src = ("import os\nfrom game import hints, create_app\nfrom . import server\nfrom .targets import Target\n"
           "def f():\n    from engine.scorer import Scorer\n    import game.store.server as s\n")
    found = {name for name, _ in imports_of(src, "game.store", True, known)}
    assert found == {"os", "game.hints", "game", "game.store.server", "game.store.targets", "engine.scorer"}
    found = {name for name, _ in imports_of("from .. import hints\nfrom ..store import Store\n",
                                            "game.store.targets", False, known)}
    assert found == {"game.hints", "game.store"}


def test_layer_rules_flag_upward_and_sibling_arrows():
    graph = {"game.store": {"game.web.pages", "game.hints"}, "game.service": {"game.generation.jobs"},
             "game.web.pages": {"game.service", "game.store"}, "game.generation.jobs": set(), "game.hints": set()}
    assert [arrow for _, _, arrow in upward_arrows(graph)] == [
        "game.service (service) -> game.generation.jobs (generation)", "game.store (store) -> game.web.pages (web)"]
    assert layer_of("game") == ("factory", 5) and layer_of("game.nothing_here") is None
    assert layer_of("game.store.lua_loader") == ("store", 2) and layer_of("engine.vqgan") == ("engine", 0)
