"""Suite-wide settings: GPU tests skip without CUDA; tests run offline and single-threaded-friendly."""

import contextlib
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a hard dependency
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@contextlib.contextmanager
def _one_torch_thread():
    """Tiny models' matmuls take microseconds: on a loaded 2-core machine extra intra-op threads only
    contend (10-30x slower). The previous thread count is restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture
def single_torch_thread():
    """Opt-in (`pytest.mark.usefixtures("single_torch_thread")`): one torch thread for a test."""
    with _one_torch_thread():
        yield


@pytest.fixture(scope="module")
def single_torch_thread_module():
    """The same for a whole module (module-scoped fixtures that build models run under it too)."""
    with _one_torch_thread():
        yield
