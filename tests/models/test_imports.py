"""Importing the model layer costs no torch; staging checks and identity run with torch hidden."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_importing_the_contract_modules_does_not_import_torch() -> None:
    result = run_python(
        """
        import sys
        import models.backend, models.registry
        assert 'torch' not in sys.modules, 'torch was imported'
        assert 'transformers' not in sys.modules, 'transformers was imported'
        import models, models.checkpoint, models.fingerprint, models.images, models.processors
        import models.transformers_backend, models.smoke
        heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'tokenizers'))
        assert not heavy, heavy
        print('ok')
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


HIDDEN_TORCH = """
    import importlib.abc
    import sys
    from pathlib import Path

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers"):
                raise ImportError(f"{name} is hidden in this test")
            return None

    sys.meta_path.insert(0, Refuse())

    from models.backend import ModelNotStaged
    from models.transformers_backend import TransformersBackend

    try:
        TransformersBackend(Path(sys.argv[1]) / "missing")
    except ModelNotStaged as error:
        assert "hf download" in str(error)
    else:
        raise AssertionError("no ModelNotStaged")
    backend = TransformersBackend(Path(sys.argv[1]))
    print(backend.identity.family, backend.identity.revision[:7], backend.is_loaded)
"""


def test_staging_checks_and_identity_need_no_torch(smoke_dir: Callable[[str], Path]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(HIDDEN_TORCH), str(smoke_dir("medgemma"))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["medgemma", "sha256:", "False"]
