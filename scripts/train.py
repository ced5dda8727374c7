"""Thin launcher for `ray submit cluster/X.yaml scripts/train.py -- [distnn train flags]`:
runs `distnn train` on the head node, joining the cluster it runs on."""
import sys

from distnn.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--address" not in args:
        args = ["--address", "auto", *args]
    sys.exit(main(["train", *args]))
