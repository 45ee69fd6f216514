"""The papers' networks: output shapes for every data set's input shape, layer
structure and parameter counts against hand counts, VGG11's padding, bad input;
and the torchvision import compatibility step."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepnet.compat import import_torchvision
from deepnet.models import MLP, VGG11, VGG11_CONFIG, ResNet18, build_model

SHAPES = {"mnist-like": ((1, 28, 28), 10), "cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100)}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", ["mlp", "vgg11", "resnet18"])
@pytest.mark.parametrize("data", list(SHAPES))
def test_output_shape_for_each_data_shape(name, data):
    in_shape, classes = SHAPES[data]
    kwargs = {"mlp": {"depth": 2, "width": 32}, "vgg11": {"width": 8, "hidden": 32}, "resnet18": {"width": 4}}[name]
    torch.manual_seed(0)
    model = build_model(name, classes, in_shape, **kwargs).eval()
    with torch.no_grad():
        out = model(torch.randn(3, *in_shape))
    assert out.shape == (3, classes) and torch.isfinite(out).all()


def test_paper_sized_networks_have_the_hand_counted_parameters():
    # VGG11 with BN on CIFAR-100: convolutions (weights, biases), BN (scale, shift), classifier with BN.
    widths, c_in, conv = [w for w in VGG11_CONFIG if w != "M"], 3, 0
    for w in widths:
        conv += c_in * w * 9 + w + 2 * w
        c_in = w
    classifier = (512 * 4096 + 4096) + 2 * 4096 + (4096 * 4096 + 4096) + 2 * 4096 + (4096 * 100 + 100)
    vgg = build_model("vgg11", 100, (3, 32, 32))
    assert n_params(vgg) == conv + classifier == 28_534_628
    # CIFAR-style ResNet18 on CIFAR-10: the widely quoted 11,173,962 parameters.
    assert n_params(build_model("resnet18", 10, (3, 32, 32))) == 11_173_962
    # MLP 8 x 2048 on 28 x 28 inputs: Linear + BN per hidden layer, then the output layer.
    mlp = build_model("mlp", 10, (1, 28, 28))
    assert n_params(mlp) == (784 * 2048 + 2048 + 2 * 2048) + 7 * (2048 * 2048 + 2048 + 2 * 2048) + 2048 * 10 + 10
    kinds = [type(m) for m in mlp.layers]
    assert kinds[1:4] == [nn.Linear, nn.BatchNorm1d, nn.ReLU] and kinds.count(nn.BatchNorm1d) == 8


def test_paper_sized_vgg11_and_resnet18_run_on_a_tiny_batch():
    torch.manual_seed(0)
    for name in ("vgg11", "resnet18"):
        model = build_model(name, 10, (1, 28, 28)).eval()
        with torch.no_grad():
            assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_vgg11_pads_28_to_32_with_zeros():
    torch.manual_seed(0)
    model = VGG11((1, 28, 28), 10, width=8, hidden=16).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(F.pad(x, (2, 2, 2, 2))), rtol=0, atol=0)
    # the classifier sees 1 x 1 maps of 512 * 8 / 64 channels after the five pools
    assert model.classifier[0].in_features == 64


def test_mlp_without_batch_norm_and_logistic_regression():
    assert not any(isinstance(m, nn.BatchNorm1d) for m in MLP((5,), 3, depth=2, width=4, batch_norm=False).modules())
    linear = MLP((2, 3), 4, depth=0)
    assert [type(m) for m in linear.layers] == [nn.Flatten, nn.Linear] and linear(torch.randn(7, 2, 3)).shape == (7, 4)


def test_resnet18_stages_and_shortcuts():
    model = ResNet18((3, 32, 32), 10, width=4)
    assert [b.conv1.out_channels for b in model.blocks] == [4, 4, 8, 8, 16, 16, 32, 32]
    assert [b.conv1.stride[0] for b in model.blocks] == [1, 1, 2, 1, 2, 1, 2, 1]
    assert [isinstance(b.shortcut, nn.Identity) for b in model.blocks] == [True, True, False, True, False, True, False, True]
    assert model.stem[0].kernel_size == (3, 3) and not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


def test_same_seed_same_weights():
    torch.manual_seed(3)
    a = build_model("mlp", 10, (1, 28, 28), depth=1, width=8)
    torch.manual_seed(3)
    b = build_model("mlp", 10, (1, 28, 28), depth=1, width=8)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="unknown name 'vgg16'; expected one of mlp, vgg11, resnet18"):
        build_model("vgg16", 10, (3, 32, 32))
    with pytest.raises(TypeError, match="model 'mlp'.*unexpected keyword argument 'channels'"):
        build_model("mlp", 10, (1, 28, 28), channels=3)
    with pytest.raises(ValueError, match="in_shape: expected \\(channels, height, width\\)"):
        build_model("vgg11", 10, (28, 28))
    with pytest.raises(ValueError, match="num_classes: expected an integer >= 2"):
        build_model("resnet18", 1, (3, 32, 32))
    with pytest.raises(ValueError, match="depth"):
        build_model("mlp", 10, (1, 28, 28), depth=-1)
    with pytest.raises(ValueError, match="pad_to"):
        build_model("vgg11", 10, (1, 28, 28), pad_to=16)


def test_import_torchvision_gives_models_and_transforms():
    torchvision = import_torchvision()
    assert import_torchvision() is torchvision  # a second call changes nothing
    model = torchvision.models.resnet18(num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    normalize = torchvision.transforms.Normalize((0.5,), (0.25,))
    torch.testing.assert_close(normalize(torch.ones(1, 2, 2)), torch.full((1, 2, 2), 2.0))
    assert hasattr(torchvision.datasets, "MNIST")
