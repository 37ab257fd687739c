"""The import graph of ``inboundd/``: layers only import downward, pure modules stay pure, no cycle.

Read with ``ast`` (nothing is imported), counting every ``import`` statement,
also those inside functions: a lazy import is still a dependency (imports
under ``if TYPE_CHECKING:`` count for the layers, not as cycles). A module
may import its own layer and the layers below it; the layers, lowest first:

* **foundation** — pure values and decisions, the clock, logs, metrics and the
  configuration machinery: they know nothing above them;
* **infrastructure** — Redis, PostgreSQL (``store/``), the queue, systemd, the
  parse worker processes (``parsing.py``), and the private servers
  ``inboundd trial`` runs (``trial/servers.py``);
* **work** — what every provider shares (``ingress/``), the provider contract
  (``provider.py``) and the consume side;
* **providers** — one package per provider; a provider never imports another;
* **registry** — ``providers/__init__.py``, the list of providers;
* **assembly** — the configuration with every provider's section, and the
  pipeline that wires the daemon's work;
* **shell** — HTTP apps, the daemon, ``inboundctl`` and ``inboundd trial``:
  nothing imports them from below.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "inboundd"

#: Lowest first; a module belongs to the first layer with a matching pattern.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", (
        "inboundd", "inboundd.clock", "inboundd.log", "inboundd.metrics", "inboundd.outcomes", "inboundd.jobs",
        "inboundd.source", "inboundd.message", "inboundd.mime", "inboundd.mime.*", "inboundd.health",
        "inboundd.backoff", "inboundd.config_convert", "inboundd.config_schema", "inboundd.trace",
        "inboundd.outage",
    )),
    ("infrastructure", (
        "inboundd.redisio", "inboundd.systemd", "inboundd.store", "inboundd.store.*", "inboundd.queue",
        "inboundd.queue.*", "inboundd.queue_scripts", "inboundd.trial.servers", "inboundd.parsing",
    )),
    ("work", ("inboundd.ingress", "inboundd.ingress.*", "inboundd.processing", "inboundd.consumer",
              "inboundd.claims", "inboundd.availability",
              "inboundd.provider", "inboundd.deliver", "inboundd.deliver.*")),
    ("providers", ("inboundd.providers.*",)),
    ("registry", ("inboundd.providers",)),
    ("assembly", ("inboundd.config", "inboundd.pipeline")),
    ("shell", ("inboundd.web", "inboundd.control", "inboundd.daemon", "inboundd.cli", "inboundd.__main__",
               "inboundd.trial", "inboundd.trial.*", "inboundd.config_docs")),
]

#: Pure modules: no I/O, so they may import only each other and no I/O library.
PURE = (
    "inboundd.outcomes", "inboundd.jobs", "inboundd.clock", "inboundd.source", "inboundd.health", "inboundd.trace",
    "inboundd.message", "inboundd.mime", "inboundd.mime.*", "inboundd.backoff",
    "inboundd.ingress.auth", "inboundd.ingress.webhook", "inboundd.ingress.lease_clock",
    "inboundd.ingress.start", "inboundd.ingress.retry_after",
    "inboundd.providers.*.proto", "inboundd.providers.*.status", "inboundd.providers.imap.proto",
    "inboundd.providers.microsoft.webhook", "inboundd.providers.microsoft.renewal",
    "inboundd.providers.microsoft.delta",
    "inboundd.deliver.signing", "inboundd.deliver.payload", "inboundd.deliver.wire", "inboundd.deliver.gate",
    "inboundd.providers.google.push", "inboundd.providers.google.certs", "inboundd.providers.google.oauth",
)
IO_LIBRARIES = {"socket", "ssl", "subprocess", "trio", "redis", "psycopg", "psycopg_pool", "imapclient", "imaplib",
                "httpx", "quart", "quart_trio", "hypercorn", "msal", "google", "trio_parallel"}
#: Parts of those libraries that do no I/O: google-auth's JWT decoding (signature check with given
#: certificates) and its exception types.
PURE_PARTS = {"google.auth.jwt", "google.auth.exceptions"}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _matches(module: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(module, pattern) for pattern in patterns)


def layer_of(module: str) -> int:
    for index, (_, patterns) in enumerate(LAYERS):
        if _matches(module, patterns):
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}")


def _type_only(tree: ast.AST) -> set[int]:
    """Ids of the import nodes inside ``if TYPE_CHECKING:`` blocks."""
    return {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
            and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
            for statement in block.body for node in ast.walk(statement)}


def _imports(module: str) -> tuple[set[str], set[str], set[str]]:
    """(inboundd modules, of them only for type checking, outside top-level packages) *module* imports."""
    path = MODULES[module]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    inside: set[str] = set()
    type_only: set[str] = set()
    outside: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    checking = _type_only(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            names = [f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES
                     or not target.startswith("inboundd") else target for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] != "inboundd":
                if name not in PURE_PARTS:
                    outside.add(name.split(".")[0])
                continue
            while name not in MODULES and "." in name:
                name = name.rsplit(".", 1)[0]
            if name != module:
                inside.add(name)
                if id(node) in checking:
                    type_only.add(name)
    return inside, type_only, outside


GRAPH = {module: _imports(module) for module in MODULES}


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, (inside, _, _) in sorted(GRAPH.items()) for target in sorted(inside)
        if layer_of(target) > layer_of(module)
    ]
    assert upward == []


def test_a_provider_never_imports_another_provider() -> None:
    crossing = []
    for module, (inside, _, _) in sorted(GRAPH.items()):
        parts = module.split(".")
        if len(parts) < 3 or parts[1] != "providers":
            continue
        for target in sorted(inside):
            other = target.split(".")
            if len(other) >= 3 and other[1] == "providers" and _provider(other) != _provider(parts):
                crossing.append(f"{module} imports {target}")
    assert crossing == []


def _provider(parts: list[str]) -> str:
    return parts[2]  # ``inboundd.providers.<name>.…``


def test_pure_modules_import_no_io() -> None:
    impure = []
    for module, (inside, _, outside) in sorted(GRAPH.items()):
        if not _matches(module, PURE):
            continue
        impure += [f"{module} imports {target}" for target in sorted(inside) if not _matches(target, PURE)
                   and target != "inboundd"]
        impure += [f"{module} imports {library}" for library in sorted(outside & IO_LIBRARIES)]
    assert impure == []


def test_the_store_knows_no_provider() -> None:
    assert [(module, target) for module, (inside, _, _) in GRAPH.items() if module.startswith("inboundd.store")
            for target in inside if target.startswith("inboundd.providers")] == []


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of *graph* as a path ``[a, b, …, a]``, or None (pure; tested below)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_no_import_cycle() -> None:
    cycle = find_cycle({module: inside - type_only for module, (inside, type_only, _) in GRAPH.items()})
    assert cycle is None, " → ".join(cycle or [])
