"""models.regimes and data.regimes: normalised activations, parameterization, datasets and their splits."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data.regimes import CIFAR_VEHICLES, build_dataset, depleted_gaussian, image_labels
from models.regimes import (
    ACTIVATIONS,
    ARCHS,
    CONV_ARCHS,
    DEEP_ARCHS,
    NormalisedActivation,
    activation_norm,
    build_model,
    check_act_beta,
    same_padding,
)
from tests.datasets import allow_tiny_cifar, write_cifar10, write_mnist

F64 = torch.float64


# --- activations -------------------------------------------------------------------

def test_relu_norm_is_exactly_one_over_sqrt2():
    assert activation_norm("relu") == pytest.approx(math.sqrt(0.5), rel=1e-14)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_normalised_activation_has_unit_second_moment(act):
    """Independent check: Gauss-Hermite quadrature (300 nodes) of the torch activation in float64."""
    z, w = np.polynomial.hermite_e.hermegauss(300)
    phi = NormalisedActivation(act)(torch.from_numpy(z)).numpy()
    second = float((w * phi**2).sum() / math.sqrt(2 * math.pi))
    assert second == pytest.approx(1.0, abs=1e-6 if act == "relu" else 1e-12)  # relu's kink slows Gauss-Hermite


def test_unknown_activation():
    with pytest.raises(ValueError, match="act must be one of"):
        activation_norm("elu")


# --- architectures -------------------------------------------------------------------

def _model(arch, shape=(6,), h=4, L=2, seed=0, act="relu"):
    return build_model(arch, shape, h, act, L if arch in DEEP_ARCHS else None, torch.Generator().manual_seed(seed))


def _mnas_count(c, h):
    """The original's mnas, counted by hand: bias-free convs (k²·C_in·C_out, depthwise k²·C), readout 20h + 1."""
    def inverted_residual(c_in, c_out):  # expand to 3 c_in, depthwise 5x5, project
        return c_in * 3 * c_in + 25 * 3 * c_in + 3 * c_in * c_out
    stem = 25 * c * 4 * h + 25 * 4 * h + 4 * h * 2 * h
    blocks = (inverted_residual(2 * h, h) + inverted_residual(h, h) + inverted_residual(h, 3 * h)
              + inverted_residual(3 * h, 3 * h))
    return stem + blocks + 3 * h * 20 * h + 20 * h + 1


def test_parameter_counts_and_output_shapes():
    counts = {
        "linear": 6,
        "simple_diagonal_linear": 6,
        "mlp": 6 * 4 + 4 * 4 + 4,
        "mlp_bias": (6 * 4 + 4) + (4 * 4 + 4) + 4,
    }
    for arch, count in counts.items():
        model = _model(arch)
        assert sum(p.numel() for p in model.parameters()) == count
        assert model(torch.randn(3, 6)).shape == (3,)
    for arch, shape in [("simple_cnn", (1, 28, 28)), ("vgg11", (1, 28, 28)), ("vgg11", (3, 32, 32)),
                        ("mnas", (1, 28, 28)), ("mnas", (3, 32, 32))]:
        model = _model(arch, shape, h=2)
        assert model(torch.randn(2, *shape)).shape == (2,)
    # simple_cnn: conv 5x5 (C_in 1 -> 2, bias), conv 5x5 (2 -> 4, bias), dense 4·7·7 -> 64 (bias), readout 64
    assert sum(p.numel() for p in _model("simple_cnn", (1, 28, 28), h=2).parameters()) == (
        25 * 2 + 2 + 25 * 2 * 4 + 4 + 4 * 7 * 7 * 64 + 64 + 64)
    for shape, h in [((1, 28, 28), 2), ((3, 32, 32), 3)]:
        assert sum(p.numel() for p in _model("mnas", shape, h=h).parameters()) == _mnas_count(shape[0], h)
    # vgg11 widths: h, 2h, 4h, 4h, 8h, 8h, 8h, 8h, then 64h, 64h; pools round up to 1x1
    vgg = _model("vgg11", (1, 28, 28), h=1)
    convs = [m.out_channels for m in vgg.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [1, 2, 4, 4, 8, 8, 8, 8]
    assert [lin.out_features for lin in vgg.dense] == [64, 64] and vgg.dense[0].in_features == 8


def test_mlp_forward_is_the_stated_parameterization():
    """x <- φ(W x / sqrt(fan_in)) twice, then W x / h, by hand."""
    model = _model("mlp", act="tanh")
    x = torch.randn(5, 6)
    phi = NormalisedActivation("tanh")
    z = phi(x @ model.hidden[0].weight.T / math.sqrt(6))
    z = phi(z @ model.hidden[1].weight.T / math.sqrt(4))
    torch.testing.assert_close(model(x), (z @ model.readout.weight.T)[:, 0] / 4)
    bias = _model("mlp_bias", act="tanh")
    zb = phi((x @ bias.hidden[0].weight.T + bias.hidden[0].bias) / math.sqrt(7))
    zb = phi((zb @ bias.hidden[1].weight.T + bias.hidden[1].bias) / math.sqrt(5))
    torch.testing.assert_close(bias(x), (zb @ bias.readout.weight.T)[:, 0] / 4)
    lin = _model("linear")
    torch.testing.assert_close(lin(x), (x @ lin.readout.weight.T)[:, 0] / math.sqrt(6))


@pytest.mark.parametrize("L", [1, 2, 3])
def test_simple_diagonal_linear_is_the_originals(L):
    """f = Σ_i x_i w_i^L / sqrt(d), one weight per input, starting at ones (Haiku's Constant(1.0)): a loop by hand."""
    model = _model("simple_diagonal_linear", shape=(5,), L=L).double()
    x = torch.randn(4, 5, dtype=F64)
    assert torch.equal(model.weight, torch.ones(5, dtype=F64))
    torch.testing.assert_close(model(x), x.sum(1) / math.sqrt(5))
    with torch.no_grad():
        model.weight.copy_(torch.tensor([0.5, -1.5, 2.0, -0.3, 1.1]))
    w = model.weight.tolist()
    by_hand = [sum(x[n, i].item() * w[i] ** L for i in range(5)) / math.sqrt(5) for n in range(4)]
    torch.testing.assert_close(model(x), torch.tensor(by_hand, dtype=F64))
    # images are flattened, as the original's reshape
    img = _model("simple_diagonal_linear", shape=(1, 2, 3), L=L).double()
    x6 = torch.randn(4, 1, 2, 3, dtype=F64)
    torch.testing.assert_close(img(x6), x6.sum(dim=(1, 2, 3)) / math.sqrt(6))


def _conv(x, weight, bias=None, stride=1, pad=(0, 0), groups=1):
    """Cross-correlation with zero padding pad = (before, after) on both spatial dims."""
    return F.conv2d(F.pad(x, (pad[0], pad[1], pad[0], pad[1])), weight, bias, stride=stride, groups=groups)


def test_simple_cnn_layers_and_forward_by_hand():
    """The original's simple_cnn: φ(conv5x5(h)), pool, φ(conv5x5(2h)), pool, dense(32h) with NO φ, readout / 32h."""
    h = 2
    model = _model("simple_cnn", (1, 28, 28), h=h, act="relu").double()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, h, (5, 5)), (h, 2 * h, (5, 5))]
    assert [(m.in_features, m.out_features, m.bias is not None) for m in linears] == [
        (2 * h * 7 * 7, 32 * h, True), (32 * h, 1, False)]
    x = torch.randn(3, 1, 28, 28, dtype=F64)
    relu = lambda z: torch.relu(z) * math.sqrt(2.0)  # noqa: E731  E[relu(z)²] = 1/2
    z = relu(_conv(x, convs[0].weight, convs[0].bias, pad=(2, 2)) / math.sqrt(25 * 1 + 1))
    z = F.max_pool2d(z, 2)  # 28 -> 14, even: no rounding
    z = relu(_conv(z, convs[1].weight, convs[1].bias, pad=(2, 2)) / math.sqrt(25 * h + 1))
    z = F.max_pool2d(z, 2).flatten(1)  # (3, 2h·7·7)
    z = (z @ linears[0].weight.T + linears[0].bias) / math.sqrt(2 * h * 49 + 1)  # no activation here
    expected = (z @ linears[1].weight.T)[:, 0] / (32 * h)
    torch.testing.assert_close(model(x), expected)
    # the missing φ matters: the dense pre-activations have both signs, so relu would change the output
    assert bool((z < 0).any()) and not torch.allclose(model(x), (relu(z) @ linears[1].weight.T)[:, 0] / (32 * h))


def test_vgg11_forward_by_hand():
    """vgg11 keeps φ after both dense(64h) layers (unlike simple_cnn); SAME max pools pad the end with −inf."""
    h = 1
    model = _model("vgg11", (1, 8, 8), h=h, act="silu").double()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    phi = NormalisedActivation("silu")

    def pool(z):  # Haiku's max_pool(window 2, stride 2, "SAME"): odd sizes get one −inf row/column at the end
        return F.max_pool2d(F.pad(z, (0, z.shape[-1] % 2, 0, z.shape[-2] % 2), value=-math.inf), 2)

    z = torch.randn(2, 1, 8, 8, dtype=F64)
    x = z
    k = 0
    for n_convs in (1, 1, 2, 2, 2):  # 8 -> 4 -> 2 -> 1 -> 1 -> 1
        for _ in range(n_convs):
            c = convs[k]
            z = phi(_conv(z, c.weight, c.bias, pad=(1, 1)) / math.sqrt(9 * c.in_channels + 1))
            k += 1
        z = pool(z)
    z = z.flatten(1)  # (2, 8h)
    for lin in model.dense:
        z = phi((z @ lin.weight.T + lin.bias) / math.sqrt(lin.in_features + 1))
    torch.testing.assert_close(model(x), (z @ model.readout.weight.T)[:, 0] / (64 * h))


def test_same_padding_is_tensorflows():
    """Stride 1: torch's padding='same' (also extra at the end for even k); stride 2: TF's documented totals,
    by hand."""
    for k in (1, 2, 3, 4, 5):
        x, w = torch.randn(1, 1, 9, 9, dtype=F64), torch.randn(1, 1, k, k, dtype=F64)
        torch.testing.assert_close(_conv(x, w, pad=same_padding(9, k, 1)), F.conv2d(x, w, padding="same"))
    # out = ceil(n/2); total = (out − 1)·2 + k − n; before = total // 2
    assert same_padding(28, 5, 2) == (1, 2) and same_padding(14, 5, 2) == (1, 2)
    assert same_padding(7, 5, 2) == (2, 2) and same_padding(32, 5, 2) == (1, 2) and same_padding(7, 1, 2) == (0, 0)


def test_mnas_forward_by_hand():
    """The original's mnas on 28x28, written out layer by layer with the paddings worked out by hand.

    Full convs divide by k·sqrt(C_in), depthwise ones by k; residuals where the shapes agree (blocks 2 and 4).
    """
    h = 2
    model = _model("mnas", (1, 28, 28), h=h, act="gelu").double()
    w = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]  # construction order
    assert [tuple(t.shape) for t in w] == [
        (8, 1, 5, 5), (8, 1, 5, 5), (4, 8, 1, 1),  # stem: conv 5x5/2 (4h), depthwise 5x5, conv 1x1 (2h)
        (12, 4, 1, 1), (12, 1, 5, 5), (2, 12, 1, 1),  # IR(h, stride 2), expansion 3
        (6, 2, 1, 1), (6, 1, 5, 5), (2, 6, 1, 1),  # IR(h, stride 1)
        (6, 2, 1, 1), (6, 1, 5, 5), (6, 6, 1, 1),  # IR(3h, stride 2)
        (18, 6, 1, 1), (18, 1, 5, 5), (6, 18, 1, 1),  # IR(3h, stride 1)
        (40, 6, 1, 1)]  # conv 1x1 (20h)
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    phi = NormalisedActivation("gelu")

    def full(z, t, stride=1, pad=(0, 0)):
        return _conv(z, t, stride=stride, pad=pad) / (t.shape[-1] * math.sqrt(z.shape[1]))

    def dw(z, t, stride, pad):
        return _conv(z, t, stride=stride, pad=pad, groups=z.shape[1]) / t.shape[-1]

    def block(z, i, stride, pad, residual):
        out = full(phi(dw(phi(full(z, w[i])), w[i + 1], stride, pad)), w[i + 2])
        return (out + z) / math.sqrt(2) if residual else out

    x = torch.randn(3, 1, 28, 28, dtype=F64)
    z = phi(full(x, w[0], 2, (1, 2)))  # 28 -> 14
    z = phi(full(phi(dw(z, w[1], 1, (2, 2))), w[2]))
    z = block(z, 3, 2, (1, 2), False)  # 14 -> 7, 2h -> h channels
    z = block(z, 6, 1, (2, 2), True)
    z = block(z, 9, 2, (2, 2), False)  # 7 -> 4, h -> 3h
    z = block(z, 12, 1, (2, 2), True)
    z = phi(full(z, w[15])).mean(dim=(2, 3))  # (3, 20h)
    expected = (z @ model.readout.weight[0] + model.readout.bias[0]) / (20 * h)
    torch.testing.assert_close(model(x), expected)


def test_act_beta_is_the_originals_unused_default():
    assert check_act_beta(1.0) == 1.0 and check_act_beta(1) == 1.0
    for bad in (2.0, 0.5, True, "1"):
        with pytest.raises(ValueError, match="act_beta must be 1.0"):
            check_act_beta(bad)
    with pytest.raises(ValueError, match="act_beta must be 1.0"):
        build_model("mlp", (6,), 4, "relu", 2, torch.Generator(), act_beta=5.0)


def test_init_is_standard_normal_and_seeded():
    model = _model("mlp", shape=(200,), h=200, L=2)
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert abs(float(w.mean())) < 3.5 / math.sqrt(w.numel())
    assert float(w.std()) == pytest.approx(1.0, abs=3.5 * math.sqrt(2 / w.numel()))
    again = torch.cat([p.detach().reshape(-1) for p in _model("mlp", shape=(200,), h=200, L=2).parameters()])
    assert torch.equal(w, again)


@pytest.mark.parametrize("kwargs, match", [
    (dict(arch="resnet"), "arch must be one of"),
    (dict(act="elu"), "act must be one of"),
    (dict(arch="mlp", L=None), r"L must be an integer >= 1 \(for arch='mlp'\); got None"),
    (dict(arch="linear", L=3), "L applies to arch in"),
    (dict(arch="simple_diagonal_linear", L=None), r"L must be an integer >= 1 \(for arch='simple_diagonal_linear'\)"),
    (dict(arch="mnas", L=None), r"needs image inputs \(C, H, W\)"),
    (dict(arch="simple_cnn", L=None), r"needs image inputs \(C, H, W\)"),
    (dict(h=0), "h must be an integer >= 1"),
])
def test_build_model_errors(kwargs, match):
    args = dict(arch="mlp", in_shape=(6,), h=4, act="relu", L=2, gen=torch.Generator())
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        build_model(**args)
    assert set(ARCHS) == {"mlp", "mlp_bias", "linear", "simple_diagonal_linear", "simple_cnn", "vgg11", "mnas"}
    assert set(CONV_ARCHS) == {"simple_cnn", "vgg11", "mnas"}


# --- synthetic data ---------------------------------------------------------------------

@pytest.mark.parametrize("chi", [0.0, 1.0, 3.0])
def test_depleted_coordinate_moments(chi):
    """|x_1|² = 2 G with G ~ Gamma((χ+1)/2): E x_1² = χ + 1 and Var x_1² = 2(χ + 1); ±3.5σ."""
    n = 40_000
    x = depleted_gaussian(n, 3, chi, np.random.default_rng(0))
    m2 = x[:, 0] ** 2
    assert abs(m2.mean() - (chi + 1)) < 3.5 * math.sqrt(2 * (chi + 1) / n)
    assert abs((x[:, 1] ** 2).mean() - 1) < 3.5 * math.sqrt(2 / n)
    assert abs((x[:, 0] > 0).mean() - 0.5) < 3.5 * 0.5 / math.sqrt(n)
    # depletion: for χ > 0 fewer points near the boundary than a Gaussian has
    near = (np.abs(x[:, 0]) < 0.1).mean()
    assert (near < 0.05) if chi > 0 else (near == pytest.approx(0.0797, abs=0.01))


@pytest.mark.parametrize("name", ["sign", "depleted_sign", "random_sign"])
def test_synthetic_sets_are_seeded_disjoint_and_labelled(name):
    data = build_dataset(name, 300, 200, seed_trainset=1, seed_testset=1, d=5, chi=1.0)
    assert data.xtr.shape == (300, 5) and data.xte.shape == (200, 5) and data.ytr.dtype == F64
    assert set(data.ytr.unique().tolist()) == {-1.0, 1.0}
    assert not torch.isin(data.xtr[:, 0], data.xte[:, 0]).any()  # same seed value, independent streams
    if name != "random_sign":
        assert torch.equal(data.ytr, torch.where(data.xtr[:, 0] > 0, 1.0, -1.0).to(F64))
    else:  # one unit teacher for both splits: least squares on train classifies test
        w = torch.linalg.lstsq(data.xtr, data.ytr[:, None]).solution[:, 0]
        assert (torch.sign(data.xte @ w) == data.yte).double().mean() > 0.9
    again = build_dataset(name, 300, 200, seed_trainset=1, seed_testset=1, d=5, chi=1.0)
    assert torch.equal(data.xtr, again.xtr) and torch.equal(data.yte, again.yte)
    other = build_dataset(name, 300, 200, seed_trainset=2, seed_testset=1, d=5, chi=1.0)
    assert not torch.equal(data.xtr, other.xtr) and torch.equal(data.xte, other.xte)


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="moons"), "dataset must be one of"),
    (dict(d=None), r"d must be an integer >= 1 \(for dataset='sign'\); got None"),
    (dict(chi=-1.0), "data_chi must be a number > -1"),
    (dict(ptr=0), "ptr must be an integer >= 1"),
    (dict(seed_testset=-1), "seed_testset must be an integer >= 0"),
    (dict(name="mnist_parity", d=5), "d applies to the synthetic datasets"),
])
def test_dataset_errors(kwargs, match):
    args = dict(name="sign", ptr=10, pte=10, seed_trainset=0, seed_testset=0, d=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        build_dataset(**args)


# --- image data (tiny files in torchvision's formats) ----------------------------------------

def test_image_labels():
    labels = torch.arange(10)
    assert image_labels("mnist_parity", labels).tolist() == [1.0, -1.0] * 5
    animal = image_labels("cifar_animal", labels)
    assert [int(i) for i in range(10) if animal[i] < 0] == list(CIFAR_VEHICLES)


def test_mnist_parity_splits(tmp_path):
    write_mnist(tmp_path, n_train=60, n_test=30, seed=0)
    data = build_dataset("mnist_parity", 50, 20, seed_trainset=3, seed_testset=4, data_root=str(tmp_path))
    assert data.xtr.shape == (50, 1, 28, 28) and data.xte.shape == (20, 1, 28, 28)
    flat_tr, flat_te = data.xtr.flatten(1), data.xte.flatten(1)
    assert torch.cdist(flat_tr, flat_te).min() > 0  # no test image among the training images
    assert abs(float(torch.cat([flat_tr, flat_te]).mean())) < 0.5  # normalised
    moved = build_dataset("mnist_parity", 50, 20, seed_trainset=5, seed_testset=4, data_root=str(tmp_path))
    assert torch.equal(moved.xte, data.xte) and not torch.equal(moved.xtr, data.xtr)
    with pytest.raises(ValueError,
                       match=r"ptr \+ pte must be <= the mnist_parity train and test splits together \(90\); got 100"):
        build_dataset("mnist_parity", 80, 20, seed_trainset=0, seed_testset=0, data_root=str(tmp_path))


def test_cifar_animal(tmp_path, monkeypatch):
    allow_tiny_cifar(monkeypatch)
    write_cifar10(tmp_path, n_train=25, n_test=10)
    data = build_dataset("cifar_animal", 20, 10, seed_trainset=0, seed_testset=0, data_root=str(tmp_path),
                         dtype=torch.float32)
    assert data.xtr.shape == (20, 3, 32, 32) and data.xtr.dtype == torch.float32
    assert set(torch.cat([data.ytr, data.yte]).unique().tolist()) <= {-1.0, 1.0}
