"""Architectures of the basis-function decomposition experiments (docs/basis_decomposition.md).

Every network is a :class:`BasisNet`: a ``body`` mapping images to penultimate
features Φ(x) (N, p) and a bias-free linear ``head`` W (C, p), so that

    f(θ, x) = Φ(x) Wᵀ        # (N, C)

and the conjugate-kernel basis (dynamics.basis) reads Φ and W directly.

Models (``MODELS``):

* ``alexnet``, ``vgg11``, ``resnet18``, ``resnet34``, ``resnet50``: torchvision's
  networks in their CIFAR variant (the original train.py): the stem is a 3×3,
  stride-1, padding-1, bias-free convolution with 64 channels, the max-pool after
  the stem is removed (ResNet's ``maxpool``, the first max-pool of VGG and AlexNet),
  and the head has no bias. Blocks, forward passes and initialisation are
  torchvision's.
* ``vit``: train.py's relative-position ViT (models.relvit): 256 channels, 8 heads of
  32, depth 8, 2×2 patches, head dropout 0.3.
* ``vit_timm``: timm's VisionTransformer in the ViT-Small configuration (embedding 384,
  depth 12, 6 heads, MLP ratio 4) with 4×4 patches, class-token pooling and a
  bias-free head (not in the original).
* ``cnn2``, ``cnn3``, ``cnn4``: mnist.py's ``convnet(layers)``: blocks conv3×3 (bias)
  → ReLU → max-pool 2 with 256-64, 256-128-64 and 256-128-128-64 channels, then
  flatten; Φ is the flattened output, p = 3136, 576 and 64 on 28×28 inputs.
* ``fig2_cnn``: grad_indep.py's ``CNN3`` (``batch_norm=False``, no ``lin_batch``): blocks
  with 128, 64, 32 channels, Φ the flattened conv3 output (p = 288).
* ``fig2_cnn_bn1d``: beta_domin.py's and small-init.py's ``CNN3``: the same blocks, then
  BatchNorm1d(288) (``lin_batch``); Φ is the BatchNorm output.

``width`` scales every network; 64 is the paper's size for every model. The
torchvision networks have every channel and hidden count c replaced by c·width/64
(all of them are multiples of 64, so the counts stay integers); timm's ViT has
6 heads of ``width`` channels; train.py's ViT 8 heads of max(1, width/2) channels
(stem max(1, width/2)); the CNNs have every channel count c replaced by
max(1, c·width/64).

Initialisation is each family's own (PyTorch's default for the CNNs); ``init_scale``
then multiplies the whole state dict, as train.py's ``init_scale`` does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from core import checks
from models.relvit import RELVIT, relvit_body

TORCHVISION_MODELS = ("alexnet", "vgg11", "resnet18", "resnet34", "resnet50")
# Block channels at the paper's width and whether a BatchNorm1d follows the flatten.
CNNS = {
    "cnn2": ((256, 64), False),  # mnist.py, convnet(2)
    "cnn3": ((256, 128, 64), False),  # mnist.py, convnet(3)
    "cnn4": ((256, 128, 128, 64), False),  # mnist.py, convnet(4)
    "fig2_cnn": ((128, 64, 32), False),  # grad_indep.py's CNN3
    "fig2_cnn_bn1d": ((128, 64, 32), True),  # beta_domin.py's and small-init.py's CNN3 (lin_batch)
}
MODELS = TORCHVISION_MODELS + ("vit", "vit_timm") + tuple(CNNS)
PAPER_WIDTH = 64  # every model's paper size
STEM_CHANNELS = 64  # the CIFAR stem's output channels at PAPER_WIDTH
VIT_SMALL = dict(depth=12, num_heads=6, mlp_ratio=4.0)  # ViT-S/…: embedding 6 heads × 64
VIT_PATCH = 4


@dataclass(frozen=True)
class InputShape:
    """Images (channels, size, size) and the number of classes."""

    channels: int
    size: int
    num_classes: int


class BasisNet(nn.Module):
    """f(x) = head(body(x)): penultimate features Φ (N, p) and a bias-free head W (C, p)."""

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.body = body
        self.head = nn.Linear(feature_dim, num_classes, bias=False)
        self.feature_dim = feature_dim
        self.num_classes = num_classes

    def features(self, x: Tensor) -> Tensor:
        """Φ(x): (N, channels, H, W) -> (N, p)."""
        return self.body(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))  # (N, C)


# --- torchvision networks, CIFAR variant -------------------------------------------

def _scaled(count: int, width: int) -> int:
    scaled, rem = divmod(count * width, PAPER_WIDTH)
    assert rem == 0 and scaled > 0, f"channel count {count} does not scale to width {width}"
    return scaled


def _cifar_variant(name: str, num_classes_placeholder: int = 10) -> tuple[nn.Module, int]:
    """torchvision's network on the meta device (no memory, no init), CIFAR-adapted, head removed.

    Returns the body and its feature dimension at the paper's width.
    """
    import torchvision

    with torch.device("meta"):
        net = getattr(torchvision.models, name)(num_classes=num_classes_placeholder)
        stem = nn.Conv2d(3, STEM_CHANNELS, kernel_size=3, stride=1, padding=1, bias=False)
        if name.startswith("resnet"):
            net.conv1, net.maxpool = stem, nn.Identity()
            feature_dim, net.fc = net.fc.in_features, nn.Identity()
        else:  # alexnet, vgg11: features[0] is the stem conv, features[2] the first max-pool
            assert isinstance(net.features[2], nn.MaxPool2d)
            net.features[0], net.features[2] = stem, nn.Identity()
            feature_dim, net.classifier[6] = net.classifier[6].in_features, nn.Identity()
    return net, feature_dim


def _materialise(module: nn.Module, width: int, in_chans: int) -> None:
    """Replace every meta Conv2d / BatchNorm2d / Linear by a real one with counts scaled by width/64.

    The stem (the first conv) takes ``in_chans`` channels. New modules get PyTorch's
    default initialisation; the family's own init is applied afterwards.
    """
    first = True
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d):
                assert child.groups == 1
                c_in = in_chans if first else _scaled(child.in_channels, width)
                first = False
                new = nn.Conv2d(c_in, _scaled(child.out_channels, width), child.kernel_size, child.stride,
                                child.padding, child.dilation, bias=child.bias is not None)
            elif isinstance(child, nn.BatchNorm2d):
                new = nn.BatchNorm2d(_scaled(child.num_features, width))
            elif isinstance(child, nn.Linear):
                new = nn.Linear(_scaled(child.in_features, width), _scaled(child.out_features, width),
                                bias=child.bias is not None)
            else:
                continue
            setattr(parent, name, new)
    if not torch.empty(()).is_meta:  # (under a meta device context every new tensor is meta by design)
        leftover = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
        assert not leftover, f"meta tensors left after materialising: {leftover}"


def _torchvision_init(name: str, net: BasisNet) -> None:
    """torchvision's own initialisation for the family (ResNet.__init__, VGG.__init__; AlexNet keeps defaults)."""
    if name.startswith("resnet"):
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
    elif name == "vgg11":
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)


def _torchvision_net(name: str, shape: InputShape, width: int) -> BasisNet:
    body, feature_dim = _cifar_variant(name)
    _materialise(body, width, shape.channels)
    net = BasisNet(body, _scaled(feature_dim, width), shape.num_classes)
    _torchvision_init(name, net)
    return net


# --- ViTs --------------------------------------------------------------------------

def _relvit_sizes(width: int) -> dict:
    half = max(1, width // 2)
    return dict(RELVIT, channels=8 * half, head_channels=half, stem_channels=half)


def _relvit(shape: InputShape, width: int) -> BasisNet:
    sizes = _relvit_sizes(width)
    body = relvit_body(shape.channels, shape.size, **sizes)
    return BasisNet(body, sizes["channels"], shape.num_classes)  # head: PyTorch's default init, as train.py


def _vit_timm(shape: InputShape, width: int) -> BasisNet:
    from timm.layers import trunc_normal_
    from timm.models.vision_transformer import VisionTransformer

    if shape.size % VIT_PATCH:
        raise ValueError(f"vit_timm needs an image size divisible by the patch size {VIT_PATCH}; got {shape.size}")
    embed_dim = VIT_SMALL["num_heads"] * width
    # num_classes=0: timm's head is the identity, so the body returns the pooled, normed token (Φ).
    body = VisionTransformer(img_size=shape.size, patch_size=VIT_PATCH, in_chans=shape.channels, num_classes=0,
                             embed_dim=embed_dim, **VIT_SMALL)
    net = BasisNet(body, embed_dim, shape.num_classes)
    trunc_normal_(net.head.weight, std=0.02)  # timm's init for every Linear of a ViT
    return net


# --- the original MNIST CNNs ---------------------------------------------------------

def cnn_channels(name: str, width: int) -> list[int]:
    """Block channels of CNN ``name`` at ``width``: c · width / 64 for the paper's c, at least 1."""
    return [max(1, c * width // PAPER_WIDTH) for c in CNNS[name][0]]


class BlockCNN(nn.Sequential):
    """[conv3×3 (stride 1, padding 1, bias) → ReLU → max-pool 2] × blocks → flatten [→ BatchNorm1d]."""

    def __init__(self, channels: list[int], in_chans: int, size: int, batch_norm_1d: bool):
        layers: list[nn.Module] = []
        c_prev = in_chans
        for c in channels:
            layers += [nn.Conv2d(c_prev, c, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2)]
            c_prev, size = c, size // 2
        if size < 1:
            raise ValueError(f"a {len(channels)}-block CNN needs images of at least {2 ** len(channels)} pixels")
        self.feature_dim = c_prev * size * size
        layers.append(nn.Flatten())
        if batch_norm_1d:
            layers.append(nn.BatchNorm1d(self.feature_dim))
        super().__init__(*layers)


# --- factory -------------------------------------------------------------------------

def check_model_name(name: str, key: str = "model") -> str:
    """``name`` if it is one of ``MODELS``; CheckError naming ``key`` otherwise."""
    return checks.one_of(key, name, MODELS)


def check_width(width, key: str = "width") -> int:
    """``width`` if it is an integer >= 1; CheckError naming ``key`` otherwise."""
    return checks.integer(key, width, lo=1, why=f"{PAPER_WIDTH} is the paper's size")


def _build(name: str, shape: InputShape, width: int) -> BasisNet:
    if name in TORCHVISION_MODELS:
        return _torchvision_net(name, shape, width)
    if name == "vit":
        return _relvit(shape, width)
    if name == "vit_timm":
        return _vit_timm(shape, width)
    body = BlockCNN(cnn_channels(name, width), shape.channels, shape.size, CNNS[name][1])
    return BasisNet(body, body.feature_dim, shape.num_classes)


@torch.no_grad()
def scale_state(net: nn.Module, scale: float) -> None:
    """Multiply every floating-point entry of the state dict by ``scale``, buffers included.

    train.py's ``init_scale`` multiplies every state-dict entry, so BatchNorm running
    statistics scale with the weights. Integer buffers (BatchNorm's batch counter, 0 at
    init; the ViT's relative-position index) are left alone: train.py truncated them
    back to integers, which keeps the counter at 0 but would corrupt the index table.
    """
    for t in net.state_dict().values():
        if t.is_floating_point():
            t.mul_(scale)


def build_model(name: str, shape: InputShape, width: int = PAPER_WIDTH, init_scale: float = 1.0,
                seed: int | None = None) -> BasisNet:
    """Build ``name`` for images of ``shape``, with every initial parameter multiplied by ``init_scale``.

    Args:
        name: one of ``MODELS``.
        shape: input channels, image size and number of classes.
        width: size multiplier; 64 is the paper's network.
        init_scale: every floating-point state-dict entry (parameters and BatchNorm
            running statistics) times init_scale, >= 0 (:func:`scale_state`).
        seed: seed of the initialisation (drawn inside a forked RNG, so the caller's global
            RNG is untouched); None uses the global RNG.

    Returns:
        A float32 :class:`BasisNet` on the CPU.

    Raises:
        ValueError: unknown name, bad width or init_scale, or an image too small for the model.
    """
    check_model_name(name)
    check_width(width)
    checks.number("init_scale", init_scale, lo=0)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        net = _build(name, shape, width)
    scale_state(net, init_scale)
    return net


def feature_dim(name: str, shape: InputShape, width: int = PAPER_WIDTH) -> int:
    """p, the penultimate feature dimension, without building the network's weights."""
    check_model_name(name)
    check_width(width)
    if name in TORCHVISION_MODELS:
        return _scaled(_cifar_variant(name)[1], width)
    if name == "vit":
        return _relvit_sizes(width)["channels"]
    if name == "vit_timm":
        return VIT_SMALL["num_heads"] * width
    channels = cnn_channels(name, width)
    return channels[-1] * (shape.size >> len(channels)) ** 2
