"""Suite-wide pytest configuration (tests/ and the doctests of src/tcm).

Doctests: ``pyproject.toml`` collects ``src/tcm`` with ``--doctest-modules``. The default
``prepend`` import mode imports ``src/tcm/a/b.py`` as ``tcm.a.b`` (``src/tcm`` is a package), i.e.
the same module objects the tests and the editable install use; were a second copy ever found on
``sys.path`` pytest stops with ``ImportPathMismatchError`` instead of testing it silently.

Thread count: ``TCM_TEST_THREADS=n`` runs every test (in every xdist worker) with
``torch.set_num_threads(n)``, so the suite can be checked with 1 and with 2 intra-op threads;
unset, torch's default is kept. NumPy's OpenBLAS threads follow ``OMP_NUM_THREADS`` /
``OPENBLAS_NUM_THREADS`` (read at import, so set them in the environment).
"""

from __future__ import annotations

import os

import pytest



def pytest_configure(config: pytest.Config) -> None:
    threads = os.environ.get("TCM_TEST_THREADS", "").strip()
    if threads:
        import torch

        n = int(threads)
        if n < 1:
            raise pytest.UsageError(f"TCM_TEST_THREADS must be a positive integer; got {threads!r}")
        torch.set_num_threads(n)
