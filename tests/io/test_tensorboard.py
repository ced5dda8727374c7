import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_writer_does_not_import_torch_and_leaves_it_importable(tmp_path):
    """tensorboardX tries ``import torch`` at import time (~2 s where torch is
    installed); distnn's writer hides it.  A stand-in torch module records whether it was
    imported, so the check holds with or without a real torch."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "torch.py").write_text("import os\nopen(os.environ['MARK'], 'a').write('x')\n")
    mark = tmp_path / "imported"
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2])\n"
        "from distnn.io.tensorboard import RunWriter\n"
        "from tensorboard.backend.event_processing.event_accumulator import EventAccumulator\n"
        "w = RunWriter(sys.argv[3]); w.scalars(3, {'loss': 0.5}); w.hparams({'lr': 0.1},"
        " {'hparam/acc': 0.9}); w.close()\n"
        "import os; assert not os.path.exists(os.environ['MARK']), 'torch was imported'\n"
        "import torch\n"                       # still importable afterwards
        "assert os.path.exists(os.environ['MARK'])\n"
        "ea = EventAccumulator(sys.argv[3]); ea.Reload()\n"
        "print([(e.step, e.value) for e in ea.Scalars('loss')])\n")
    out = subprocess.run([sys.executable, "-c", code, str(fake), str(ROOT),
                          str(tmp_path / "run")], capture_output=True, text=True,
                         env={"MARK": str(mark), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[(3, 0.5)]"
