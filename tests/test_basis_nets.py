"""models.basis_nets: every architecture for every dataset shape, the CIFAR variants against the
original train.py's modifications of torchvision's networks, mnist.py's CNNs, init_scale."""
import pytest
import torch
from torch import nn

from models.basis_nets import (MODELS, BasisNet, InputShape, build_model, cnn_channels, feature_dim)

SHAPES = {"mnist": InputShape(1, 28, 10), "cifar10": InputShape(3, 32, 10), "cifar100": InputShape(3, 32, 100)}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny convolutions: threads only add overhead on shared CPUs


@pytest.mark.parametrize("data", sorted(SHAPES))
@pytest.mark.parametrize("name", MODELS)
def test_every_model_builds_and_runs_forward_and_backward_at_tiny_width(name, data):
    shape = SHAPES[data]
    net = build_model(name, shape, width=4, seed=0)
    assert isinstance(net, BasisNet) and net.head.bias is None
    x = torch.randn(2, shape.channels, shape.size, shape.size, generator=torch.Generator().manual_seed(0))
    net.eval()  # (dropout off, so both passes see the same network)
    phi = net.features(x)
    assert phi.shape == (2, feature_dim(name, shape, 4)) == (2, net.feature_dim)
    torch.testing.assert_close(net(x), phi @ net.head.weight.T)
    out = net.train()(x)
    assert out.shape == (2, shape.num_classes)
    out.square().mean().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def _original_cifar_variant(name, num_classes=10):
    """train.py's load_architecture, on the meta device: torchvision's network, then its edits."""
    import torchvision

    with torch.device("meta"):
        net = getattr(torchvision.models, name)(num_classes=num_classes)
        stem = nn.Conv2d(3, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)
        if name.startswith("resnet"):
            net.conv1, net.maxpool = stem, nn.Identity()
            net.fc = nn.Linear(net.fc.in_features, num_classes, bias=False)
        else:
            net.features[0], net.features[2] = stem, nn.Identity()
            net.classifier[6] = nn.Linear(4096, num_classes, bias=False)
    return net


@pytest.mark.parametrize("name", ["alexnet", "vgg11", "resnet18", "resnet34", "resnet50"])
def test_cifar_variants_at_paper_width_have_the_original_parameters(name):
    with torch.device("meta"):
        ours = build_model(name, SHAPES["cifar10"], width=64)
    theirs = _original_cifar_variant(name)
    head = "fc.weight" if name.startswith("resnet") else "classifier.6.weight"
    want = {("head.weight" if k == head else f"body.{k}"): tuple(p.shape) for k, p in theirs.named_parameters()}
    got = {k: tuple(p.shape) for k, p in ours.named_parameters()}
    assert got == want
    want_buffers = {f"body.{k}": tuple(b.shape) for k, b in theirs.named_buffers()}
    assert {k: tuple(b.shape) for k, b in ours.named_buffers()} == want_buffers


@pytest.mark.parametrize("name", ["alexnet", "vgg11", "resnet18", "resnet50"])
def test_cifar_stem_is_3x3_stride_1_without_maxpool(name):
    net = build_model(name, SHAPES["cifar10"], width=4, seed=0)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    stem = convs[0]
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1) and stem.padding == (1, 1) and stem.bias is None
    assert stem.in_channels == 3 and stem.out_channels == 4  # 64 · width / 64
    # nothing halves the resolution before the second conv
    x = torch.randn(1, 3, 32, 32)
    seen = []
    handle = convs[1].register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[-1]))
    net.eval()(x)
    handle.remove()
    assert seen[0] == 32


def test_vit_is_timm_vit_small_with_patch_4():
    from timm.models.vision_transformer import VisionTransformer

    with torch.device("meta"):
        net = build_model("vit", SHAPES["cifar10"], width=64)
    body = net.body
    assert isinstance(body, VisionTransformer)
    assert body.embed_dim == 384 and len(body.blocks) == 12 and body.blocks[0].attn.num_heads == 6
    assert body.patch_embed.patch_size == (4, 4) and net.feature_dim == 384
    assert isinstance(body.head, nn.Identity) and net.head.bias is None


def test_mnist_cnns_are_mnist_py_blocks():
    assert cnn_channels(3, 64) == [128, 64, 32]
    assert [feature_dim(f"cnn{b}", SHAPES["mnist"]) for b in (2, 3, 4)] == [64 * 7 * 7, 32 * 3 * 3, 16 * 1 * 1]
    net = build_model("cnn3", SHAPES["mnist"], width=64, seed=0)
    kinds = [type(m) for m in net.body]
    assert kinds == [nn.Conv2d, nn.ReLU, nn.MaxPool2d] * 3 + [nn.Flatten, nn.BatchNorm1d]
    assert net.body[-1].num_features == 288 and net.head.weight.shape == (10, 288)  # mnist.py's lin_batch / classifier


def test_init_scale_multiplies_every_parameter_and_no_buffer():
    base = build_model("resnet18", SHAPES["cifar10"], width=2, seed=3)
    scaled = build_model("resnet18", SHAPES["cifar10"], width=2, init_scale=0.3, seed=3)
    for (name, p), q in zip(base.named_parameters(), scaled.parameters()):
        torch.testing.assert_close(q, 0.3 * p, msg=name)
    for b, c in zip(base.buffers(), scaled.buffers()):
        assert torch.equal(b, c)
    zero = build_model("cnn3", SHAPES["mnist"], width=2, init_scale=0.0, seed=3)
    assert all((p == 0).all() for p in zero.parameters())


def test_seed_makes_init_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model("cnn3", SHAPES["mnist"], width=2, seed=5)
    assert torch.equal(torch.rand(1), before)
    b = build_model("cnn3", SHAPES["mnist"], width=2, seed=5)
    c = build_model("cnn3", SHAPES["mnist"], width=2, seed=6)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="resnet101"), "model must be one of"),
    (dict(width=0), "width must be an integer >= 1"),
    (dict(width=2.5), "width must be an integer >= 1"),
    (dict(init_scale=-1.0), "init_scale must be a finite number >= 0"),
    (dict(init_scale=float("nan")), "init_scale must be a finite number >= 0"),
    (dict(name="vit", shape=InputShape(1, 30, 10)), "divisible by the patch size 4"),
    (dict(name="cnn4", shape=InputShape(1, 8, 10)), "at least 16 pixels"),
])
def test_bad_arguments_raise(kwargs, match):
    args = dict(name="cnn3", shape=SHAPES["mnist"], width=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        build_model(**args)
