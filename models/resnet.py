"""ResNet18 for 32x32 images: torchvision's architecture, a CIFAR stem, and a channel count.

The blocks are torchvision's own ``BasicBlock``. The module uses torchvision's
attribute names (conv1, bn1, layer1..layer4, fc), so at ``base_channels=64`` with the
ImageNet stem its ``state_dict`` is interchangeable with
``torchvision.models.resnet18(num_classes=...)``.

Stems:
    imagenet: 7x7 stride-2 conv, then 3x3 stride-2 max-pool (torchvision's resnet18);
    cifar:    3x3 stride-1 conv and no max-pool (He et al. 2016's CIFAR variant),
              which keeps 32x32 inputs at 32x32 into layer1.

``base_channels`` k sets the stages' channels to (k, 2k, 4k, 8k), as the original
expt_llc_curve's CustomResNet18(k) does (its ``layer_width_factor``, default 64), so
tests can run a k=4 ResNet18 in milliseconds.
"""
from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, conv1x1

STEMS = ("imagenet", "cifar")
# model_name -> stem
MODEL_NAMES = {"resnet18": "imagenet", "resnet18_cifar": "cifar"}
STAGE_MULTIPLIERS = (1, 2, 4, 8)
RESNET18_BLOCKS = (2, 2, 2, 2)


def stage_widths(base_channels: int) -> list[int]:
    """Channels of the four stages: (k, 2k, 4k, 8k) for k = base_channels."""
    if isinstance(base_channels, bool) or not isinstance(base_channels, int) or base_channels < 1:
        raise ValueError(f"base_channels must be an integer >= 1; got {base_channels!r}")
    return [m * base_channels for m in STAGE_MULTIPLIERS]


class ResNet(nn.Module):
    """BasicBlock ResNet with a choice of stem and scaled widths; architecture and init only.

    Args:
        blocks: BasicBlocks per stage, (2, 2, 2, 2) for ResNet18.
        num_classes: outputs of the final linear layer.
        stem: 'imagenet' or 'cifar' (see the module docstring).
        base_channels: k, the first stage's channels; the stages have (k, 2k, 4k, 8k).
        in_channels: image channels.
    """

    def __init__(self, blocks=RESNET18_BLOCKS, num_classes: int = 10, stem: str = "imagenet",
                 base_channels: int = 64, in_channels: int = 3):
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}; got {stem!r}")
        widths = stage_widths(base_channels)
        self.inplanes = widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(widths[0], blocks[0], stride=1)
        self.layer2 = self._make_layer(widths[1], blocks[1], stride=2)
        self.layer3 = self._make_layer(widths[2], blocks[2], stride=2)
        self.layer4 = self._make_layer(widths[3], blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, num_classes)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def build_resnet(model_name: str, num_classes: int = 10, base_channels: int = 64, in_channels: int = 3) -> ResNet:
    """'resnet18' (torchvision's stem) or 'resnet18_cifar' (3x3 stride-1 stem, no max-pool)."""
    if model_name not in MODEL_NAMES:
        raise ValueError(f"model_name must be one of {tuple(MODEL_NAMES)}; got {model_name!r}")
    return ResNet(RESNET18_BLOCKS, num_classes, MODEL_NAMES[model_name], base_channels, in_channels)
