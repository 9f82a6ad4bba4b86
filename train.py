"""Train a gated convolutional language model: `python train.py --help`."""

from gcnn.training.cli import main

raise SystemExit(main())
