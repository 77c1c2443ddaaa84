"""Writes the TorchScript files lth ships, with the repository's own exporter (scripts/lth_export.py).

    python scripts/make-torchscript-models.py [--out-dir DIR]

- examples/models/lenet300100-digits.pt: LeNet-300-100 for 8x8 one-channel images and 10 classes,
  with the built-in lenet300100's parameter names (fc_layers.0, fc_layers.1, fc), so that with
  `init = "seed"` it starts from exactly the built-in model's weights (examples/digits-torchscript.toml).
- worker/tests/fixtures/tiny-convbn.pt: a few-KB conv + batch-norm + linear network for 8x8 digits,
  for the worker's tests of train/eval mode and batch-norm state.

Needs torch (the project's venv: ~/.cache/lth/venv, see docs/byo.md). The weights saved are
PyTorch's default initialisation from torch.manual_seed(0); lth re-initialises them from the
sweep's seed unless the sweep says init = "file".
"""

import argparse
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lth_export  # noqa: E402


class LeNet300100(nn.Module):
    """open_lth's mnist_lenet_300_100, for `inputs` pixels."""

    def __init__(self, inputs: int = 64, classes: int = 10):
        super().__init__()
        self.fc_layers = nn.ModuleList([nn.Linear(inputs, 300), nn.Linear(300, 100)])
        self.fc = nn.Linear(100, classes)

    def forward(self, x):
        x = x.flatten(1)
        for layer in self.fc_layers:
            x = torch.relu(layer(x))
        return self.fc(x)


class TinyConvBn(nn.Module):
    """conv 3x3 (4 filters) + batch norm + ReLU + linear, for 1x8x8 inputs."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.flatten(1))


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", help="write both files into this folder instead of their places in the repository")
    args = ap.parse_args()
    targets = {
        "lenet300100-digits.pt": os.path.join(root, "examples", "models"),
        "tiny-convbn.pt": os.path.join(root, "worker", "tests", "fixtures"),
    }
    torch.manual_seed(0)
    models = {"lenet300100-digits.pt": LeNet300100(), "tiny-convbn.pt": TinyConvBn()}
    for name, model in models.items():
        folder = args.out_dir or targets[name]
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, name)
        lth_export.export(model, path)
        print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
