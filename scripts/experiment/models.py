"""The small ResNet the experiment trains: torchvision's ResNet shape, at 64x64 and CPU cost.

It reuses torchvision's ``BasicBlock`` and keeps torchvision's module names (``conv1``,
``bn1``, ``relu``, ``maxpool``, ``layer1`` .. ``layer4``, ``avgpool``, ``fc``), so every
layer name that latinhib accepts for ``resnet18`` means the same stage here. It differs in
three ways, all for speed on a 2-core CPU: one block per stage, a width of 16/32/64/128
channels instead of 64/128/256/512, and a stride-2 3x3 stem without max-pooling. At a 64x64
input the stages are 32, 32, 16, 8 and 4 pixels wide: the same feature-map sizes that
torchvision's resnet18 has at a 128x128 input, at a quarter of resnet18's cost at 64x64
(measured on this 2-core CPU: 0.08 s vs 0.29 s per training step of 64 images).

latinhib loads it with ``--arch scripts.experiment.models:SmallResNet`` from the
repository root (the module is imported from the Python path).
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock


class SmallResNet(nn.Module):
    """ResNet with one BasicBlock per stage. Input (N, 3, H, W), output (N, num_classes)."""

    def __init__(self, num_classes: int = 8, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        widths = [width, 2 * width, 4 * width, 8 * width]
        in_planes = width
        stages = []
        for index, planes in enumerate(widths):
            stride = 1 if index == 0 else 2
            downsample = None
            if stride != 1 or in_planes != planes:
                downsample = nn.Sequential(
                    nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes),
                )
            stages.append(nn.Sequential(BasicBlock(in_planes, planes, stride, downsample)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.maxpool(self.relu(self.bn1(self.conv1(image))))
        features = self.layer4(self.layer3(self.layer2(self.layer1(features))))
        return self.fc(torch.flatten(self.avgpool(features), 1))
