import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def data_home(tmp_path, monkeypatch):
    """An empty DISTNN_DATA cache for tests that must not see the user's cache."""
    d = tmp_path / "cache"
    monkeypatch.setenv("DISTNN_DATA", str(d))
    return d


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray (2 CPUs) shared by every Ray test of the session."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def blob_dir(tmp_path_factory):
    """IDX files of 3,600 training and 400 test 8x8 'images' of 4 separable blobs."""
    from tests.data import tiny
    return tiny.write_blobs(tmp_path_factory.mktemp("idxdata"), 3600, 400, low=120, high=120)
