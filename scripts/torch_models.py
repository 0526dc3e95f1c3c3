#!/usr/bin/env python3
"""The seed networks of models/*.cnn in PyTorch, and their trainable parameter counts.

Each network follows Dive into Deep Learning's PyTorch definition (inline torch.nn: no
torchvision, no d2l package), with the input shapes of the .cnn files (one input channel,
10 classes). seq1d and volume3d are cnnc's own small 1-D and 3-D networks; their twins here
are written from models/seq1d.cnn and models/volume3d.cnn.

Writes tests/golden/param_counts.json = {model file stem: trainable parameter count}, which
tests/param_counts.rs compares with what cnnc computes from the .cnn files. The script also
runs a forward pass on a zero batch of each network's input shape, so a wrong layer size fails
here and not silently in the count.

Usage (the venv of ../shared/peers/README.md, or any with torch):
    /work/peers-venv/bin/python scripts/torch_models.py [--output tests/golden/param_counts.json]
"""
import argparse
import json
import pathlib

import torch
from torch import nn

REPO = pathlib.Path(__file__).resolve().parent.parent


def edge():
    """d2l §7.2's learned edge detector: one 1×2 kernel, no bias (models/edge.cnn)."""
    return nn.Conv2d(1, 1, kernel_size=(1, 2), bias=False)


def lenet(act=nn.Sigmoid, pool=nn.AvgPool2d):
    """d2l §7.6 LeNet (sigmoid, average pooling); act/pool swapped for the modern variant."""
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), act(), pool(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), act(), pool(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), act(),
        nn.Linear(120, 84), act(),
        nn.Linear(84, 10))


def alexnet():
    """d2l §8.1 AlexNet for 1×224×224 Fashion-MNIST."""
    return nn.Sequential(
        nn.Conv2d(1, 96, kernel_size=11, stride=4, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(96, 256, kernel_size=5, padding=2), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Flatten(),
        nn.Linear(6400, 4096), nn.ReLU(), nn.Dropout(p=0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(p=0.5),
        nn.Linear(4096, 10))


def vgg_block(num_convs, in_channels, out_channels):
    layers = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU()]
        in_channels = out_channels
    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


def vgg11(conv_arch=((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))):
    """d2l §8.2 VGG-11 (full width, as models/vgg.cnn) for 1×224×224."""
    blocks, in_channels = [], 1
    for num_convs, out_channels in conv_arch:
        blocks.append(vgg_block(num_convs, in_channels, out_channels))
        in_channels = out_channels
    return nn.Sequential(
        *blocks, nn.Flatten(),
        nn.Linear(out_channels * 7 * 7, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 10))


def nin_block(in_channels, out_channels, kernel_size, strides, padding):
    """d2l's nin_block; cnnc's prelude `nin(channels, kernel, stride, padding)`."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, strides, padding), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU())


def nin():
    """d2l §8.3 NiN for 1×224×224."""
    return nn.Sequential(
        nin_block(1, 96, kernel_size=11, strides=4, padding=0),
        nn.MaxPool2d(3, stride=2),
        nin_block(96, 256, kernel_size=5, strides=1, padding=2),
        nn.MaxPool2d(3, stride=2),
        nin_block(256, 384, kernel_size=3, strides=1, padding=1),
        nn.MaxPool2d(3, stride=2),
        nn.Dropout(0.5),
        nin_block(384, 10, kernel_size=3, strides=1, padding=1),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten())


class Inception(nn.Module):
    """d2l's Inception; cnnc's prelude `inception(c1, c2, c3, c4)`."""

    def __init__(self, in_channels, c1, c2, c3, c4):
        super().__init__()
        self.p1_1 = nn.Conv2d(in_channels, c1, kernel_size=1)
        self.p2_1 = nn.Conv2d(in_channels, c2[0], kernel_size=1)
        self.p2_2 = nn.Conv2d(c2[0], c2[1], kernel_size=3, padding=1)
        self.p3_1 = nn.Conv2d(in_channels, c3[0], kernel_size=1)
        self.p3_2 = nn.Conv2d(c3[0], c3[1], kernel_size=5, padding=2)
        self.p4_1 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.p4_2 = nn.Conv2d(in_channels, c4, kernel_size=1)

    def forward(self, x):
        relu = torch.relu
        p1 = relu(self.p1_1(x))
        p2 = relu(self.p2_2(relu(self.p2_1(x))))
        p3 = relu(self.p3_2(relu(self.p3_1(x))))
        p4 = relu(self.p4_2(self.p4_1(x)))
        return torch.cat((p1, p2, p3, p4), dim=1)


def googlenet():
    """d2l §8.4 GoogLeNet for 1×96×96."""
    b1 = nn.Sequential(nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b2 = nn.Sequential(nn.Conv2d(64, 64, kernel_size=1), nn.ReLU(),
                       nn.Conv2d(64, 192, kernel_size=3, padding=1), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b3 = nn.Sequential(Inception(192, 64, (96, 128), (16, 32), 32),
                       Inception(256, 128, (128, 192), (32, 96), 64),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b4 = nn.Sequential(Inception(480, 192, (96, 208), (16, 48), 64),
                       Inception(512, 160, (112, 224), (24, 64), 64),
                       Inception(512, 128, (128, 256), (24, 64), 64),
                       Inception(512, 112, (144, 288), (32, 64), 64),
                       Inception(528, 256, (160, 320), (32, 128), 128),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b5 = nn.Sequential(Inception(832, 256, (160, 320), (32, 128), 128),
                       Inception(832, 384, (192, 384), (48, 128), 128),
                       nn.AdaptiveAvgPool2d((1, 1)),
                       nn.Flatten())
    return nn.Sequential(b1, b2, b3, b4, b5, nn.Linear(1024, 10))


class Residual(nn.Module):
    """d2l's Residual: two 3×3 conv + batchnorm, optional 1×1 conv shortcut, ReLU after the sum."""

    def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1):
        super().__init__()
        self.conv1 = nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1,
                               stride=strides)
        self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1)
        self.conv3 = (nn.Conv2d(input_channels, num_channels, kernel_size=1, stride=strides)
                      if use_1x1conv else None)
        self.bn1 = nn.BatchNorm2d(num_channels)
        self.bn2 = nn.BatchNorm2d(num_channels)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.conv3 is not None:
            x = self.conv3(x)
        return torch.relu(y + x)


def resnet_block(input_channels, num_channels, num_residuals, first_block=False):
    blocks = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blocks.append(Residual(input_channels, num_channels, use_1x1conv=True, strides=2))
        else:
            blocks.append(Residual(num_channels, num_channels))
    return blocks


def resnet18():
    """d2l §8.6 ResNet-18 for 1×96×96."""
    b1 = nn.Sequential(nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3),
                       nn.BatchNorm2d(64), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b2 = nn.Sequential(*resnet_block(64, 64, 2, first_block=True))
    b3 = nn.Sequential(*resnet_block(64, 128, 2))
    b4 = nn.Sequential(*resnet_block(128, 256, 2))
    b5 = nn.Sequential(*resnet_block(256, 512, 2))
    return nn.Sequential(b1, b2, b3, b4, b5, nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
                         nn.Linear(512, 10))


def seq1d(width=16):
    """models/seq1d.cnn: three conv/batchnorm/relu/maxpool stages over a 1×128 sequence."""
    def stage(cin, cout):
        return [nn.Conv1d(cin, cout, kernel_size=5, padding=2), nn.BatchNorm1d(cout), nn.ReLU(),
                nn.MaxPool1d(kernel_size=2)]
    return nn.Sequential(
        *stage(1, width), *stage(width, 2 * width), *stage(2 * width, 4 * width),
        nn.Conv1d(4 * width, 4 * width, kernel_size=3, padding="same", dilation=2), nn.ReLU(),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(),
        nn.Linear(4 * width, 32), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(32, 10))


def volume3d():
    """models/volume3d.cnn: three conv/batchnorm/relu stages over a 1×16×32×32 volume."""
    return nn.Sequential(
        nn.Conv3d(1, 8, kernel_size=3, padding=1), nn.BatchNorm3d(8), nn.ReLU(),
        nn.MaxPool3d(kernel_size=(1, 2, 2)),
        nn.Conv3d(8, 16, kernel_size=3, padding=1), nn.BatchNorm3d(16), nn.ReLU(),
        nn.MaxPool3d(kernel_size=2),
        nn.Conv3d(16, 32, kernel_size=3, stride=(1, 2, 2), padding=1), nn.BatchNorm3d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(),
        nn.Linear(32, 4))


# model file stem -> (constructor, input shape, output shape; both without the batch axis)
MODELS = {
    "edge": (edge, (1, 6, 8), (1, 6, 7)),
    "lenet": (lenet, (1, 28, 28), (10,)),
    "lenet_modern": (lambda: lenet(nn.ReLU, nn.MaxPool2d), (1, 28, 28), (10,)),
    "alexnet": (alexnet, (1, 224, 224), (10,)),
    "vgg": (vgg11, (1, 224, 224), (10,)),
    "nin": (nin, (1, 224, 224), (10,)),
    "googlenet": (googlenet, (1, 96, 96), (10,)),
    "resnet18": (resnet18, (1, 96, 96), (10,)),
    "seq1d": (seq1d, (1, 128), (10,)),
    "volume3d": (volume3d, (1, 16, 32, 32), (4,)),
}


def trainable_count(net):
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", default=str(REPO / "tests" / "golden" / "param_counts.json"))
    args = ap.parse_args()

    counts = {}
    for name, (build, input_shape, output_shape) in MODELS.items():
        net = build().eval()
        with torch.no_grad():
            out = net(torch.zeros((1, *input_shape)))
        if tuple(out.shape[1:]) != output_shape:
            raise SystemExit(f"{name}: output shape {tuple(out.shape[1:])}, expected {output_shape}")
        counts[name] = trainable_count(net)
        print(f"{name:14s} {counts[name]:>12,d} trainable parameters")

    out_path = pathlib.Path(args.output)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(counts, indent=2) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
