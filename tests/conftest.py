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
