"""The README's first commands are the contract: keep them and CI in step."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_ci_runs_exactly_the_readme_test_command():
    train, test = _readme_commands()[:2]
    ci = (ROOT / ".ci" / "run").read_text()
    assert test in ci.splitlines()
    assert "pytest" in test and "distnn train --dataset mnist" in train


def test_readme_train_flags_exist():
    from distnn.cli import build_parser
    train = _readme_commands()[0]
    argv = train.split(".venv/bin/distnn ", 1)[1].split()
    args = build_parser().parse_args(argv)
    assert args.command == "train" and args.dataset == "mnist"
