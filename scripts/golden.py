#!/usr/bin/env python3
"""PyTorch golden values for cnnc's engine: forward, loss, gradients and batchnorm statistics.

For each golden network, the PyTorch twin is built with a fixed seed and evaluated on a small
seeded batch; everything is written to tests/golden/<name>.safetensors (float32):

    <param>                    every parameter and batchnorm buffer under cnnc's name
                               (LANGUAGE.md "Parameter names"), PyTorch layout; batchnorm
                               buffers hold the values *before* the train-mode forward
    input                      [N, *input shape]
    labels                     [N] integer class labels stored as float32
    output_infer               [N, classes]  eval mode (batchnorm uses running statistics)
    output_train               [N, classes]  train mode (batchnorm uses batch statistics)
    loss                       [1]           mean softmax cross-entropy of output_train
    grad.<param>               gradient of loss for every trainable parameter
    running_after.<buffer>     batchnorm running_mean / running_var after that one
                               train-mode forward (momentum 0.1, unbiased variance)

The networks: lenet (models/lenet.cnn, d2l's LeNet with Xavier weights), and the small nets of
tests/golden/: nin_block.cnn, inception_block.cnn, residual_bn.cnn. The golden networks have no
dropout, so train mode is deterministic. Batchnorm weights, biases and running statistics are
set to seeded non-trivial values, so that eval mode differs from train mode and a swapped
statistic shows.

Everything is computed in float64 from the float32 parameters and inputs, then rounded to
float32: the goldens carry no float32 rounding of their own, and the difference from cnnc is
cnnc's error alone.

The name mapping (PyTorch module path -> cnnc node path) is written out per network below; a
parameter's name is the mapped module path plus `.weight`, `.bias`, `.running_mean` or
`.running_var`. When a cnnc binary is available (default target/release/cnnc), the mapped names
and shapes are checked against `cnnc params FILE --format json`, so a mapping that disagrees
with the front end fails here rather than in the engine's tests.

Exact command (from the repository root; the venv of ../shared/peers/README.md):
    python3 -m venv /work/peers-venv
    /work/peers-venv/bin/pip install -r scripts/requirements-golden.txt
    cargo build --release                      # for the name check (optional)
    /work/peers-venv/bin/python scripts/golden.py [--only lenet,...] [--cnnc target/release/cnnc]
Versions that produced the committed files: Python 3.11.7, torch 2.15.0+cu132 (run on the CPU),
numpy 2.4.6, safetensors 0.8.0.
"""
import argparse
import json
import pathlib
import subprocess
import sys

import torch
from safetensors.torch import save_file
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from torch_models import Inception, Residual, lenet, nin_block  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden"
SEED = 0
BATCH = 4


def build_lenet():
    net = lenet()
    for m in net.modules():  # d2l's init_cnn
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
    return net


def build_nin_block():
    return nn.Sequential(
        nin_block(3, 8, kernel_size=5, strides=2, padding=1),
        nn.MaxPool2d(3, stride=2),
        nin_block(8, 6, kernel_size=3, strides=1, padding=1),
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten())


def build_inception_block():
    return nn.Sequential(
        Inception(4, 2, (3, 4), (2, 3), 2),
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
        nn.Linear(11, 5))


def build_residual_bn():
    return nn.Sequential(
        nn.Conv2d(3, 4, kernel_size=3, padding=1),
        Residual(4, 4),
        Residual(4, 6, use_1x1conv=True, strides=2),
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
        nn.Linear(6, 3))


# name -> (.cnn file, PyTorch builder, input shape without batch, classes, input kind,
#          {PyTorch module path: cnnc node path})
NETWORKS = {
    "lenet": ("models/lenet.cnn", build_lenet, (1, 28, 28), 10, "pixels", {
        "0": "conv1",
        "3": "conv2",
        "7": "dense1",
        "9": "dense2",
        "11": "dense3",
    }),
    "nin_block": ("tests/golden/nin_block.cnn", build_nin_block, (3, 11, 11), 6, "normal", {
        # nin(channels, kernel, stride, padding): conv1 (k×k), conv2 and conv3 (1×1)
        "0.0": "nin1.conv1",
        "0.2": "nin1.conv2",
        "0.4": "nin1.conv3",
        "2.0": "nin2.conv1",
        "2.2": "nin2.conv2",
        "2.4": "nin2.conv3",
    }),
    "inception_block": ("tests/golden/inception_block.cnn", build_inception_block, (4, 6, 6), 5,
                        "normal", {
        # d2l's path p<i>_<j> is branch i, j-th layer; cnnc counts convs per branch, and the
        # 4th branch's max pool is not a conv, so p4_2 is that branch's conv1.
        "0.p1_1": "inception1.branch1.conv1",
        "0.p2_1": "inception1.branch2.conv1",
        "0.p2_2": "inception1.branch2.conv2",
        "0.p3_1": "inception1.branch3.conv1",
        "0.p3_2": "inception1.branch3.conv2",
        "0.p4_2": "inception1.branch4.conv1",
        "3": "dense1",
    }),
    "residual_bn": ("tests/golden/residual_bn.cnn", build_residual_bn, (3, 6, 6), 3, "normal", {
        "0": "conv1",
        # `residual { ... }` is add { branch { ... } branch { identity } } in its own naming
        # scope; a bare `add` (like `concat`) opens none, so its branches are named in the
        # network's scope.
        "1.conv1": "residual1.conv1",
        "1.bn1": "residual1.batchnorm1",
        "1.conv2": "residual1.conv2",
        "1.bn2": "residual1.batchnorm2",
        "2.conv1": "branch1.conv1",
        "2.bn1": "branch1.batchnorm1",
        "2.conv2": "branch1.conv2",
        "2.bn2": "branch1.batchnorm2",
        "2.conv3": "branch2.conv1",
        "5": "dense1",
    }),
}


def cnnc_name(torch_name, modules):
    """`1.bn1.running_mean` -> `residual1.batchnorm1.running_mean`."""
    module, _, suffix = torch_name.rpartition(".")
    if module not in modules:
        raise SystemExit(f"no cnnc name for PyTorch parameter {torch_name}: add `{module}` to the "
                         "mapping")
    return f"{modules[module]}.{suffix}"


def randomise_batchnorm(net, gen):
    """Seeded non-trivial batchnorm parameters and statistics (PyTorch starts at 1, 0, 0, 1)."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


def golden(name):
    path, build, input_shape, classes, input_kind, modules = NETWORKS[name]
    torch.manual_seed(SEED)
    net = build()
    gen = torch.Generator().manual_seed(SEED + 1)
    randomise_batchnorm(net, gen)
    if input_kind == "pixels":  # images in [0, 1], as d2l's ToTensor gives
        x = torch.rand((BATCH, *input_shape), generator=gen)
    else:
        x = torch.randn((BATCH, *input_shape), generator=gen)
    labels = torch.randint(0, classes, (BATCH,), generator=gen)

    # Parameters are float32; computing in float64 from exactly those values keeps PyTorch's
    # own float32 rounding out of the golden values.
    out = {}
    for torch_name, value in net.state_dict().items():
        if torch_name.endswith("num_batches_tracked"):
            continue  # PyTorch's counter; cnnc has no such buffer
        out[cnnc_name(torch_name, modules)] = value.detach().float().clone()
    net = net.double()
    x64 = x.double()

    net.eval()
    with torch.no_grad():
        out["output_infer"] = net(x64)

    net.train()
    logits = net(x64)
    loss = nn.functional.cross_entropy(logits, labels)
    loss.backward()
    out["output_train"] = logits.detach()
    out["loss"] = loss.detach().reshape(1)
    for torch_name, param in net.named_parameters():
        out[f"grad.{cnnc_name(torch_name, modules)}"] = param.grad
    for torch_name, buffer in net.named_buffers():
        if not torch_name.endswith("num_batches_tracked"):
            out[f"running_after.{cnnc_name(torch_name, modules)}"] = buffer
    out["input"] = x
    out["labels"] = labels.float()

    tensors = {k: v.detach().float().contiguous() for k, v in out.items()}
    metadata = {"network": path, "script": "scripts/golden.py", "seed": str(SEED),
                "torch": torch.__version__, "compute": "float64, rounded to float32"}
    return path, tensors, metadata


def check_names(cnnc, path, tensors):
    """The mapped names, shapes and trainable flags equal what `cnnc params` lists."""
    result = subprocess.run([cnnc, "params", str(REPO / path), "--format", "json"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"`{cnnc} params {path}` failed:\n{result.stderr}")
    try:
        params = json.loads(result.stdout)
    except json.JSONDecodeError as e:
        raise SystemExit(f"`{cnnc} params {path} --format json` printed no JSON ({e}):\n"
                         f"{result.stdout}{result.stderr}")
    listed = {p["name"]: (tuple(p["shape"]), p["trainable"]) for p in params}
    mapped = {name: (tuple(t.shape), f"grad.{name}" in tensors) for name, t in tensors.items()
              if name not in ("input", "labels", "output_infer", "output_train", "loss")
              and not name.startswith(("grad.", "running_after."))}
    if listed != mapped:
        only_cnnc = sorted(set(listed.items()) - set(mapped.items()))
        only_torch = sorted(set(mapped.items()) - set(listed.items()))
        raise SystemExit(f"{path}: names disagree with cnnc params\n  cnnc only: {only_cnnc}\n"
                         f"  mapping only: {only_torch}")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(NETWORKS), help="comma-separated network names")
    ap.add_argument("--cnnc", default=str(REPO / "target" / "release" / "cnnc"),
                    help="cnnc binary used to check the names (skipped if it does not exist)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # a fixed reduction order

    for name in args.only.split(","):
        if name not in NETWORKS:
            raise SystemExit(f"unknown network {name!r}; known: {', '.join(NETWORKS)}")
        path, tensors, metadata = golden(name)
        if pathlib.Path(args.cnnc).exists():
            check_names(args.cnnc, path, tensors)
            checked = "names checked with cnnc params"
        else:
            checked = f"names NOT checked ({args.cnnc} does not exist)"
        target = GOLDEN / f"{name}.safetensors"
        save_file(tensors, str(target), metadata=metadata)
        print(f"{target.relative_to(REPO)}: {len(tensors)} tensors, "
              f"{target.stat().st_size:,} bytes, loss {tensors['loss'].item():.6f}; {checked}")


if __name__ == "__main__":
    main()
