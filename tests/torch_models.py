"""PyTorch re-implementations of the official LIP architectures and their baselines.

Written from the facts of the official release (module structure and state_dict key
names), to check the Flax models against. Sizes are parameters so tests can run tiny
variants with the official key layout.
"""

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

COEFF = 12.0


def lip2d(x, logit, kernel=3, stride=2, padding=1):
    weight = logit.exp()
    return F.avg_pool2d(x * weight, kernel, stride, padding) / F.avg_pool2d(
        weight, kernel, stride, padding)


class SoftGate(nn.Module):
    def forward(self, x):
        return torch.sigmoid(x) * COEFF


def _in(c):
    return nn.InstanceNorm2d(c, affine=True)


def _conv(cin, cout, k, stride=1):
    return nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)


class SimplifiedLIP(nn.Module):
    def __init__(self, c, names=("conv", "bn")):
        super().__init__()
        self.logit = nn.Sequential(OrderedDict([(names[0], _conv(c, c, 3)), (names[1], _in(c)),
                                                ("gate", SoftGate())]))

    def forward(self, x):
        return lip2d(x, self.logit(x))


class BottleneckShared(nn.Module):
    def __init__(self, cin, width):
        super().__init__()
        self.logit = nn.Sequential(OrderedDict([
            ("conv1", _conv(cin, width, 1)), ("bn1", _in(width)), ("relu1", nn.ReLU()),
            ("conv2", _conv(width, width, 3)), ("bn2", _in(width)), ("relu2", nn.ReLU())]))

    def forward(self, x):
        return self.logit(x)


class BottleneckLIP(nn.Module):
    """A LIP head: pools x with logits computed from the shared trunk output."""

    def __init__(self, c, width):
        super().__init__()
        self.postprocessing = nn.Sequential(OrderedDict([
            ("conv", _conv(width, c, 1)), ("bn", _in(c)), ("gate", SoftGate())]))

    def forward(self, x, shared):
        return lip2d(x, self.postprocessing(shared))


class Shortcut(nn.Module):
    def __init__(self, cin, cout, lip_width=None):
        super().__init__()
        if lip_width:
            self.lip = BottleneckLIP(cin, lip_width)
        self.conv = _conv(cin, cout, 1)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x, shared=None):
        if shared is not None:
            x = self.lip(x, shared)
        return self.bn(self.conv(x))


class Bottleneck(nn.Module):
    def __init__(self, cin, planes, stride, lip_width=None, torchvision=False):
        super().__init__()
        self.lip = stride == 2 and lip_width
        if self.lip:
            self.bottleneck_shared = BottleneckShared(cin, lip_width)
        self.conv1, self.bn1 = _conv(cin, planes, 1), nn.BatchNorm2d(planes)
        if self.lip:
            self.conv2 = nn.ModuleList([BottleneckLIP(planes, lip_width),
                                        _conv(planes, planes, 1)])
        else:
            self.conv2 = _conv(planes, planes, 3, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = _conv(planes, 4 * planes, 1), nn.BatchNorm2d(4 * planes)
        self.downsample = None
        if cin != 4 * planes:
            if torchvision:
                self.downsample = nn.Sequential(_conv(cin, 4 * planes, 1, stride),
                                                nn.BatchNorm2d(4 * planes))
            else:
                self.downsample = Shortcut(cin, 4 * planes, lip_width if self.lip else None)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        if self.lip:
            shared = self.bottleneck_shared(x)
            out = self.conv2[1](self.conv2[0](out, shared))
            residual = self.downsample(x, shared)
        else:
            out = self.conv2(out)
            residual = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn2(out))
        out = self.bn3(self.conv3(out))
        return F.relu(out + residual)


class ResNet(nn.Module):
    """Official LIP-ResNet (lip=True) or torchvision's Bottleneck ResNet (lip=False)."""

    def __init__(self, layers, lip, width=64, lip_width=128, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = SimplifiedLIP(width) if lip else nn.MaxPool2d(3, 2, 1)
        cin = width
        for i, blocks in enumerate(layers):
            planes = width * 2**i
            stage = []
            for j in range(blocks):
                stride = 2 if i > 0 and j == 0 else 1
                stage.append(Bottleneck(cin, planes, stride, lip_width if lip else None,
                                        torchvision=not lip))
                cin = 4 * planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(x.mean((2, 3)))


class DenseLayer(nn.Module):
    def __init__(self, cin, growth, bn_size):
        super().__init__()
        self.norm1, self.conv1 = nn.BatchNorm2d(cin), _conv(cin, bn_size * growth, 1)
        self.norm2, self.conv2 = nn.BatchNorm2d(bn_size * growth), _conv(bn_size * growth,
                                                                         growth, 3)

    def forward(self, x):
        y = self.conv1(F.relu(self.norm1(x)))
        return torch.cat([x, self.conv2(F.relu(self.norm2(y)))], 1)


class TransitionLIP(nn.Module):
    def __init__(self, c, width):
        super().__init__()
        self.logit = nn.Sequential(OrderedDict([
            ("conv1", _conv(c, width, 1)), ("bn1", _in(width)), ("relu1", nn.ReLU()),
            ("conv2", _conv(width, width, 3)), ("bn2", _in(width)), ("relu2", nn.ReLU()),
            ("conv3", _conv(width, c, 1)), ("bn3", _in(c)), ("gate", SoftGate())]))

    def forward(self, x):
        return lip2d(x, self.logit(x), 2, 2, 0)


class Transition(nn.Module):
    def __init__(self, cin, lip_width=None):
        super().__init__()
        self.norm, self.conv = nn.BatchNorm2d(cin), _conv(cin, cin // 2, 1)
        self.pool = TransitionLIP(cin // 2, lip_width) if lip_width else nn.AvgPool2d(2, 2)

    def forward(self, x):
        return self.pool(self.conv(F.relu(self.norm(x))))


class DenseNet(nn.Module):
    """Official LIP-DenseNet-BC (lip=True) or torchvision's DenseNet-BC (lip=False)."""

    def __init__(self, blocks, lip, growth=32, init=64, bn_size=4, lip_width=128,
                 num_classes=1000):
        super().__init__()
        features = OrderedDict(conv0=nn.Conv2d(3, init, 7, 2, 3, bias=False),
                               norm0=nn.BatchNorm2d(init), relu0=nn.ReLU(),
                               pool0=SimplifiedLIP(init, ("conv1", "bn1")) if lip
                               else nn.MaxPool2d(3, 2, 1))
        c = init
        for i, n in enumerate(blocks, start=1):
            block = nn.Module()
            for j in range(1, n + 1):
                block.add_module(f"denselayer{j}", DenseLayer(c, growth, bn_size))
                c += growth
            block.forward = lambda x, b=block: [x := layer(x) for layer in b.children()][-1]
            features[f"denseblock{i}"] = block
            if i < len(blocks):
                features[f"transition{i}"] = Transition(c, lip_width if lip else None)
                c //= 2
        features["norm5"] = nn.BatchNorm2d(c)
        self.features = nn.Sequential(features)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.classifier(F.relu(self.features(x)).mean((2, 3)))


def randomise(model, seed=0):
    """Random weights everywhere and random BatchNorm statistics, in place."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("num_batches_tracked"):
                continue
            noise = torch.randn(tensor.shape, generator=gen, dtype=tensor.dtype)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + noise.abs())
            elif tensor.ndim > 1:
                tensor.copy_(noise / tensor[0].numel() ** 0.5)
            elif name.endswith("weight"):
                tensor.copy_(1 + 0.2 * noise)
            else:
                tensor.copy_(0.2 * noise)
    return model
