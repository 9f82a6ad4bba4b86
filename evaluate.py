"""Evaluate gcnn checkpoints: `python evaluate.py {perplexity,score,sample,latency} ...`."""

import sys

from gcnn.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main())
