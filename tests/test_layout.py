"""Import boundaries and the command line's surface (real subprocesses)."""

from __future__ import annotations

import ast
import io
import os
import subprocess
import sys
import textwrap
import tokenize
from pathlib import Path

import pytest

from tests.support.services import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PACSVLM_")}
    env.update({"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}, **extra)
    return env


def run(args: list[str], *, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, env=clean_env(**env), capture_output=True, text=True, timeout=timeout)


def cli(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "worker.cli", *args], timeout=timeout, **env)


def test_import_linter_contracts_are_kept() -> None:
    lint_imports = BIN / "lint-imports"
    if not lint_imports.exists():
        pytest.fail(f"{lint_imports} is missing: pip install -e '.[dev]'")
    result = run([str(lint_imports)], timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.replace("0 broken", "")


HIDDEN_TORCH = textwrap.dedent(
    """
    import importlib.abc
    import sys

    attempts = []

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers"):
                attempts.append(name)
                raise ImportError(f"{name} is hidden in this test")
            return None

    sys.modules["torch"] = None
    sys.meta_path.insert(0, Refuse())

    import integration.dicom.listener
    import integration.intake.assembly
    import integration.cli
    import worker.cli

    assert sys.modules["torch"] is None, "something replaced the hidden torch"
    assert "transformers" not in sys.modules, "transformers was imported"
    assert not attempts, f"tried to import {attempts}"
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "models"))
    assert loaded == ["torch"], loaded
    print("edge imported without torch")
    """
)


def test_the_edge_imports_without_torch() -> None:
    result = run([sys.executable, "-c", HIDDEN_TORCH])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "edge imported without torch" in result.stdout


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["listen"],
        ["demo"],
        ["db"],
        ["db", "upgrade"],
        ["db", "downgrade"],
        ["db", "current"],
        ["studies"],
        ["studies", "list"],
    ],
    ids=lambda c: " ".join(c) or "root",
)
def test_help(command: list[str], tmp_path: Path) -> None:
    result = cli(*command, "--help", PACSVLM_DATA_DIR=str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Usage" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == []  # --help touches nothing


def test_root_help_lists_every_command() -> None:
    result = cli("--help")
    for name in ("listen", "demo", "db", "studies"):
        assert name in result.stdout


@pytest.mark.parametrize(
    "calling_aes",
    [
        None,
        pytest.param(""),
    ],
    ids=["unset", "empty"],
)
def test_listen_without_calling_aes_explains_itself(calling_aes: str | None, tmp_path: Path) -> None:
    env = {"PACSVLM_DATA_DIR": str(tmp_path), "PACSVLM_LISTEN_PORT": str(free_port())}
    if calling_aes is not None:
        env["PACSVLM_CALLING_AES"] = calling_aes
    result = cli("listen", timeout=120, **env)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "PACSVLM_CALLING_AES" in output
    assert "Traceback" not in output


def test_listen_with_a_bad_port_is_a_settings_error(tmp_path: Path) -> None:
    result = cli("listen", PACSVLM_DATA_DIR=str(tmp_path), PACSVLM_LISTEN_PORT="notaport")
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "PACSVLM_LISTEN_PORT" in output
    assert "invalid settings" in output
    assert "Traceback" not in output


def test_listen_with_malformed_calling_aes_is_a_settings_error(tmp_path: Path) -> None:
    result = cli("listen", PACSVLM_DATA_DIR=str(tmp_path), PACSVLM_CALLING_AES='{"CT1": ')
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "PACSVLM_CALLING_AES" in output
    assert "Traceback" not in output


#: Most lines of code a module may hold (docstrings, comments and blank lines not counted).
MAX_MODULE_LINES = 400
SIZED_PACKAGES = ("integration", "worker", "models", "bench", "tests")


def lines_of_code(source: str) -> int:
    """Count the lines that hold code: no docstring, comment or blank line."""
    tree = ast.parse(source)
    docstrings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            value = first.value if isinstance(first, ast.Expr) else None
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                docstrings.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    skipped = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    code: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in skipped:
            code.update(range(token.start[0], token.end[0] + 1))
    return len(code - docstrings)


def test_lines_of_code_counts_code_only() -> None:
    source = textwrap.dedent(
        '''
        """Module.

        More.
        """

        # a comment


        def f(x: int) -> int:
            """One.

            Two.
            """
            return (
                x + 1
            )
        '''
    )
    assert lines_of_code(source) == 4


def test_no_module_is_over_the_size_limit() -> None:
    sizes = {
        path.relative_to(ROOT).as_posix(): lines_of_code(path.read_text())
        for package in SIZED_PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if "migrations" not in path.parts
    }
    assert len(sizes) > 100  # the walk found the packages
    over = {name: size for name, size in sizes.items() if size > MAX_MODULE_LINES}
    assert not over, f"modules over {MAX_MODULE_LINES} lines of code (split them by concern): {over}"


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of nodes that reach each other (a group of two or more is a cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_strongly_connected_finds_a_cycle() -> None:
    assert _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_modules_or_folders() -> None:
    import grimp

    graph = grimp.build_graph("integration", "worker", "models")
    modules = {module: set(graph.find_modules_directly_imported_by(module)) for module in graph.modules}
    assert len(modules) > 100

    packages = {module.rsplit(".", 1)[0] for module in modules if "." in module}

    def folder(module: str) -> str:
        """A module's unit: its folder below a root package (``integration.web``), else the module itself.

        A module directly in a root package (``integration.config``, ``models.registry``) is a unit of its own,
        so a cycle through the root's modules and a subfolder is still found.
        """
        home = module if module in packages else module.rsplit(".", 1)[0]
        return ".".join(home.split(".")[:2]) if "." in home else module

    def related(one: str, other: str) -> bool:  # a root package's __init__ is the parent of every unit
        return "." not in other or "." not in one

    folders: dict[str, set[str]] = {}
    for module, imported in modules.items():
        home = folder(module)
        folders.setdefault(home, set()).update(
            folder(m) for m in imported if folder(m) != home and not related(folder(m), home)
        )
    assert not _strongly_connected(modules), "import cycles between modules"
    assert not _strongly_connected(folders), "import cycles between folders"
