"""models.basis_nets: every architecture for every dataset shape, the CIFAR variants against the
original train.py's modifications of torchvision's networks, mnist.py's and the Fig. 2 scripts' CNNs
against the originals written out, train.py's relative-position ViT, init_scale on the state dict."""
import math

import pytest
import torch
from torch import nn

from models.basis_nets import MODELS, BasisNet, InputShape, build_model, cnn_channels, feature_dim

SHAPES = {"mnist": InputShape(1, 28, 10), "cifar10": InputShape(3, 32, 10), "cifar100": InputShape(3, 32, 100)}


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


def test_vit_timm_is_timm_vit_small_with_patch_4():
    from timm.models.vision_transformer import VisionTransformer

    with torch.device("meta"):
        net = build_model("vit_timm", SHAPES["cifar10"], width=64)
    body = net.body
    assert isinstance(body, VisionTransformer)
    assert body.embed_dim == 384 and len(body.blocks) == 12 and body.blocks[0].attn.num_heads == 6
    assert body.patch_embed.patch_size == (4, 4) and net.feature_dim == 384
    assert isinstance(body.head, nn.Identity) and net.head.bias is None


def test_vit_is_train_py_relative_position_vit():
    from models.relvit import ChannelLayerNorm, GatedResidual, PositionEmbedding, RelativeSelfAttention

    net = build_model("vit", SHAPES["cifar10"], width=64, seed=0)
    body = net.body
    stem, patch = body[0], body[2]
    assert (stem.in_channels, stem.out_channels, stem.kernel_size) == (3, 32, (3, 3))
    assert (patch.out_channels, patch.kernel_size, patch.stride) == (256, (2, 2), (2, 2))
    assert isinstance(body[3], PositionEmbedding) and body[3].table.shape == (256, 16, 16)
    blocks = [m for m in body if isinstance(m, GatedResidual)]
    attn = [m for m in body.modules() if isinstance(m, RelativeSelfAttention)]
    assert len(blocks) == 16 and len(attn) == 8  # depth 8: an attention and a feed-forward residual each
    assert attn[0].heads == 8 and attn[0].head_channels == 32 and attn[0].rel_bias.shape == (8, 31 * 31)
    assert all(float(b.gamma.detach()) == 0.0 for b in blocks)  # every residual branch starts closed
    ff = blocks[1].f
    assert isinstance(ff[0], ChannelLayerNorm) and (ff[1].in_channels, ff[1].out_channels) == (256, 1024)
    assert isinstance(body[-1], nn.Dropout) and body[-1].p == 0.3  # Φ is the head's dropout output
    assert net.feature_dim == 256 and net.head.weight.shape == (10, 256) and net.head.bias is None
    # Kaiming-normal (fan-in) conv weights: std √2 / √fan_in; 256·1·1 inputs for a 1×1 conv, 262144 draws
    w = attn[0].keys.weight
    assert abs(float(w.std()) - math.sqrt(2 / 256)) < 0.01 * math.sqrt(2 / 256)
    assert float(attn[0].keys.bias.abs().max()) == 0.0


def test_relative_attention_matches_the_formula_by_loops():
    """softmax over keys i of k_i·q_j/√d + r[y_i − y_j + h − 1, x_i − x_j + w − 1], per head, then Σ_i v_i a_ij."""
    from models.relvit import RelativeSelfAttention

    torch.manual_seed(0)
    h, w, c, d = 2, 3, 4, 2
    att = RelativeSelfAttention(c, d, (h, w)).double()
    torch.nn.init.normal_(att.rel_bias)
    x = torch.randn(1, c, h, w, dtype=torch.float64)
    k, q, v = (m(x).reshape(c, h * w) for m in (att.keys, att.queries, att.values))
    out = torch.zeros(c, h * w, dtype=torch.float64)
    pos = [(y, xx) for y in range(h) for xx in range(w)]
    for head in range(c // d):
        rows = slice(head * d, (head + 1) * d)
        for j, (yj, xj) in enumerate(pos):
            logits = torch.stack([k[rows, i] @ q[rows, j] / math.sqrt(d)
                                  + att.rel_bias[head, (yi - yj + h - 1) * (2 * w - 1) + xi - xj + w - 1]
                                  for i, (yi, xi) in enumerate(pos)])
            a = torch.softmax(logits, 0)
            out[rows, j] = sum(a[i] * v[rows, i] for i in range(h * w))
    want = att.unify(out.reshape(1, c, h, w))
    torch.testing.assert_close(att(x), want, rtol=1e-12, atol=1e-12)  # float64 sums of O(1) terms


def _mnist_py_convnet(layers):
    """mnist.py's convnet(layers), written out from the original: conv-ReLU-pool blocks, flatten, bias-free linear."""
    width = {2: [1, 256, 64], 3: [1, 256, 128, 64], 4: [1, 256, 128, 128, 64]}[layers]
    head_in = {2: 3136, 3: 576, 4: 64}[layers]
    modules = []
    for i in range(layers):
        modules += [nn.Conv2d(width[i], width[i + 1], kernel_size=3, stride=1, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*modules, nn.Flatten(), nn.Linear(head_in, 10, bias=False))


def _fig2_cnn3(bn1d):
    """grad_indep.py's (bn1d False) / beta_domin.py's and small-init.py's (True) CNN3 with batch_norm=False."""
    blocks = [nn.Sequential(nn.Conv2d(a, b, 3, 1, 1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
              for a, b in ((1, 128), (128, 64), (64, 32))]
    tail = [nn.Flatten()] + ([nn.BatchNorm1d(288)] if bn1d else [])
    return nn.Sequential(*blocks, *tail, nn.Linear(288, 10, bias=False))


def _copy_and_compare(ours, theirs, x):
    """Same parameters and buffers in the same order and shapes; copied over, the same outputs."""
    mine, ref = list(ours.state_dict().values()), list(theirs.state_dict().values())
    assert [tuple(t.shape) for t in mine] == [tuple(t.shape) for t in ref]
    theirs.load_state_dict(dict(zip(theirs.state_dict(), mine)))
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)  # float32, same ops in the same order


@pytest.mark.parametrize("blocks, p", [(2, 3136), (3, 576), (4, 64)])
def test_mnist_cnns_are_mnist_py_convnets(blocks, p):
    net = build_model(f"cnn{blocks}", SHAPES["mnist"], width=64, seed=0)
    assert net.feature_dim == feature_dim(f"cnn{blocks}", SHAPES["mnist"]) == p
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in net.modules())
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    _copy_and_compare(net, _mnist_py_convnet(blocks), x)
    assert cnn_channels(f"cnn{blocks}", 64) == {2: [256, 64], 3: [256, 128, 64], 4: [256, 128, 128, 64]}[blocks]


@pytest.mark.parametrize("name, bn1d", [("fig2_cnn", False), ("fig2_cnn_bn1d", True)])
def test_fig2_cnns_are_the_scripts_cnn3(name, bn1d):
    net = build_model(name, SHAPES["mnist"], width=64, seed=0)
    assert net.feature_dim == 288 and isinstance(net.body[-1], nn.BatchNorm1d) == bn1d
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    _copy_and_compare(net, _fig2_cnn3(bn1d), x)


def test_init_scale_multiplies_the_whole_state_dict_as_train_py():
    """train.py's init_scale: every state-dict entry times the scale, then load_state_dict (buffers included)."""
    base = build_model("fig2_cnn_bn1d", SHAPES["mnist"], width=4, seed=3)
    with torch.no_grad():  # move the running statistics off their 0 / 1 init, so scaling them shows
        base.body[-1].running_mean.normal_()
        base.body[-1].running_var.uniform_(0.5, 2.0)
    ref = build_model("fig2_cnn_bn1d", SHAPES["mnist"], width=4, seed=3)
    ref.load_state_dict(base.state_dict())
    ref.load_state_dict({k: v * 0.3 for k, v in ref.state_dict().items()})  # the original's loop
    from models.basis_nets import scale_state

    scale_state(base, 0.3)
    for (name, got), want in zip(base.state_dict().items(), ref.state_dict().values()):
        assert got.dtype == want.dtype, name
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0.0 if got.dtype == torch.int64 else 1e-12, msg=name)
    scaled = build_model("resnet18", SHAPES["cifar10"], width=2, init_scale=0.5, seed=3)
    bn = scaled.body.bn1
    torch.testing.assert_close(bn.running_var, torch.full_like(bn.running_var, 0.5))  # 0.5 · 1, exactly
    assert int(bn.num_batches_tracked) == 0
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
    (dict(name="vit_timm", shape=InputShape(1, 30, 10)), "divisible by the patch size 4"),
    (dict(name="vit", shape=InputShape(1, 27, 10)), "divisible by the patch size 2"),
    (dict(name="cnn4", shape=InputShape(1, 8, 10)), "at least 16 pixels"),
])
def test_bad_arguments_raise(kwargs, match):
    args = dict(name="cnn3", shape=SHAPES["mnist"], width=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        build_model(**args)
