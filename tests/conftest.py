import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest


#: datasets the tests read from the user's cache on purpose (fetched once, kept)
CACHED_DATASETS = ("mnist", "fashion-mnist", "digits")


@pytest.fixture(scope="session", autouse=True)
def private_data_cache(tmp_path_factory):
    """Every test writes into a temporary DISTNN_DATA (the standardisation statistics,
    a test's own datasets), never into the user's ~/.cache/distnn; the built-in
    datasets are read from (and fetched once into) the user's cache through links."""
    real = Path(os.environ.get("DISTNN_DATA") or Path.home() / ".cache" / "distnn").expanduser()
    tmp = tmp_path_factory.mktemp("distnn-data")
    for name in CACHED_DATASETS:
        (real / name).mkdir(parents=True, exist_ok=True)
        (tmp / name).symlink_to(real / name, target_is_directory=True)
    saved = os.environ.get("DISTNN_DATA")
    os.environ["DISTNN_DATA"] = str(tmp)
    yield tmp
    if saved is None:
        os.environ.pop("DISTNN_DATA", None)
    else:
        os.environ["DISTNN_DATA"] = saved


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


@pytest.fixture(scope="session")
def s3_env():
    """An S3 server (moto's) on a free loopback port for the session; the environment
    that points pyarrow (and distnn) at it."""
    pytest.importorskip("moto")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("the moto S3 server did not start")
            time.sleep(0.2)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    yield env
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


@pytest.fixture
def bucket(s3_env, monkeypatch, tmp_path):
    """A new bucket, the environment set for it, and a private stage directory."""
    for k, v in s3_env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("DISTNN_STAGE", str(tmp_path / "stage"))
    name = "b" + uuid.uuid4().hex[:12]
    pafs = pytest.importorskip("pyarrow.fs")
    fs = pafs.S3FileSystem(endpoint_override=s3_env["AWS_ENDPOINT_URL"], access_key="testing",
                           secret_key="testing", region="us-east-1",
                           allow_bucket_creation=True)
    fs.create_dir(name)
    return name, fs
