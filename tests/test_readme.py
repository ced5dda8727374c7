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


#: the pages whose commands a user copies: the front page and docs/
DOCS = ("README.md", "docs/GUIDE.md", "docs/CLUSTER.md", "docs/RESULTS.md")


def _doc_commands(path):
    """Every ``distnn ...`` command in a Markdown file's bash blocks and table cells,
    continuation lines joined and comments dropped."""
    import shlex
    text = (ROOT / path).read_text()
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            found.append(line.split("  #")[0].strip())
    # inline: the full train commands of tables (a mention like `distnn eval` is not one)
    found += [c for c in re.findall(r"`(distnn train [^`]+)`", text) if c.count(" --") > 2]
    out = []
    for line in found:
        if "distnn " not in line or "..." in line or "[" in line:
            continue                     # a pattern, not a command (``train ... --resume``)
        words = shlex.split(line.split("distnn ", 1)[1].split(" > ")[0])
        out.append(words)
    return out


def test_every_documented_command_parses():
    """Each ``distnn`` command in the README and docs/ is accepted as written
    (flags that exist, values of the right type, no placeholders like ``--seed S``)."""
    from distnn.cli import build_parser
    from distnn.io.files import check_targets
    commands = [c for doc in DOCS for c in _doc_commands(doc)]
    assert len(commands) > 30
    for words in commands:
        try:
            args = build_parser().parse_args(words)
        except SystemExit as e:
            if e.code:       # --help exits 0
                raise AssertionError(f"distnn {' '.join(words)}") from None
            continue
        if args.command == "train" and getattr(args, "metrics_out", None):
            # and its outputs pass the check made before training (where a metrics file
            # inside the checkpoint directory is refused)
            try:
                check_targets({"--checkpoint-dir": args.checkpoint_dir,
                               "--logdir": args.logdir}, {},
                              ("--metrics-out", args.metrics_out))
            except ValueError as e:
                raise AssertionError(f"distnn {' '.join(words)}: {e}") from None


def test_the_cheap_readme_commands_run_as_written(tmp_path):
    """The README's commands that need no dataset download or long run, run by a shell
    in an empty directory exactly as printed."""
    import os
    import subprocess
    import sys
    readme = "\n".join((ROOT / doc).read_text() for doc in DOCS)
    cheap = ["distnn recipes", "distnn recipes show nielsen-ch3 > ch3.toml",
             "distnn train --config ch3.toml --lr 0.25 --print-config",
             "distnn gradcheck --layers 20,15,10 --activation tanh --batchnorm --keep-prob 0.8 "
             "--l2 0.1", "distnn train --help"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for cmd in cheap:
        assert cmd in readme, cmd
        r = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, (cmd, r.stderr[-2000:])


def _anchors(text: str) -> set:
    """The anchors GitHub makes of a Markdown file's headings."""
    out = set()
    for h in re.findall(r"^#+ (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def test_every_link_between_the_pages_resolves():
    """The README and docs/ link to each other's sections: each file exists and each
    #anchor is a heading of the page it names."""
    pages = [*DOCS, "docs/BENCHMARKS.md", "CONTRIBUTING.md"]
    for page in pages:
        text = (ROOT / page).read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            where = (ROOT / page).parent / path if path else ROOT / page
            assert where.exists(), f"{page}: link to {target}: no such file"
            if anchor and where.suffix == ".md":
                assert anchor in _anchors(where.read_text()), \
                    f"{page}: link to {target}: no such heading"
