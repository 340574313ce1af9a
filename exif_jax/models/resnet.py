"""ResNet-50 (v1.5, bottleneck) with torchvision's module names and padding, BatchNorm train/eval/frozen.

Paths map 1:1 to torchvision's state_dict by replacing '/' with '.' and renaming leaves:
  conv1/kernel [7,7,3,64] (HWIO)          conv1.weight (OIHW: kernel.transpose(3, 2, 0, 1))
  bn1/{scale,bias,mean,var}               bn1.{weight,bias,running_mean,running_var}
  layer1/0/conv1 ... layer4/2/bn3         layer1.0.conv1 ... layer4.2.bn3
  layerK/0/downsample/0, .../1            layerK.0.downsample.0 (conv), .1 (bn)
  fc/{kernel [2048,E], bias}              fc.{weight (=.T), bias}
BatchNorm: eps 1e-5, torch momentum 0.1 (= flax 0.9). Flax keeps the biased batch variance as the running
variance where torch keeps the unbiased one; at batch sizes that train a ResNet the difference is < 1e-3.
Mode: `model.train()` uses batch statistics over the whole (global) batch and updates the running ones;
`model.eval()` uses the running ones; `bn_frozen=True` uses the running ones in both modes.
norm_dtype (model.norm_dtype): what the BatchNorms compute and output in (None: the compute dtype; their
statistics are f32 either way).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from exif_jax.models.vit import normalize_uint8

STAGES = {"50": (3, 4, 6, 3), "101": (3, 4, 23, 3), "152": (3, 8, 36, 3), "tiny": (1, 1, 1, 1)}
EXPANSION = 4


def stages_for(variant: str) -> tuple[int, ...]:
    """Blocks per stage for "50" / "101" / "152" (torchvision) or "tiny" (one block a stage, for tests)."""
    if str(variant) not in STAGES:
        raise ValueError(f"ResNet variant must be one of {sorted(STAGES)}, got {variant!r}")
    return STAGES[str(variant)]


def _conv(cin: int, cout: int, k: int, stride: int, pad: int, dtype, param_dtype, rngs: nnx.Rngs) -> nnx.Conv:
    # torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), no bias before a BatchNorm.
    init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
    return nnx.Conv(cin, cout, (k, k), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                    use_bias=False, kernel_init=init, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def _bn(c: int, dtype, param_dtype, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(c, momentum=0.9, epsilon=1e-5, use_running_average=False, dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs)


class Bottleneck(nnx.Module):
    """1x1 -> 3x3 (stride here, v1.5) -> 1x1 x4, with a projection shortcut where shapes change."""

    def __init__(self, cin: int, planes: int, stride: int, *, frozen: bool, dtype, param_dtype, norm_dtype=None,
                 rngs: nnx.Rngs):
        cout = planes * EXPANSION
        norm_dtype = norm_dtype or dtype
        self.frozen = frozen
        self.conv1 = _conv(cin, planes, 1, 1, 0, dtype, param_dtype, rngs)
        self.bn1 = _bn(planes, norm_dtype, param_dtype, rngs)
        self.conv2 = _conv(planes, planes, 3, stride, 1, dtype, param_dtype, rngs)
        self.bn2 = _bn(planes, norm_dtype, param_dtype, rngs)
        self.conv3 = _conv(planes, cout, 1, 1, 0, dtype, param_dtype, rngs)
        self.bn3 = _bn(cout, norm_dtype, param_dtype, rngs)
        self.downsample = (nnx.List([_conv(cin, cout, 1, stride, 0, dtype, param_dtype, rngs),
                                     _bn(cout, norm_dtype, param_dtype, rngs)])
                           if stride != 1 or cin != cout else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        ura = True if self.frozen else None  # None: the module's train()/eval() mode decides
        y = jax.nn.relu(self.bn1(self.conv1(x), ura))
        y = jax.nn.relu(self.bn2(self.conv2(y), ura))
        y = self.bn3(self.conv3(y), ura)
        if self.downsample is not None:
            x = self.downsample[1](self.downsample[0](x), ura)
        return jax.nn.relu(x + y)


class ResNet(nnx.Module):
    """torchvision-compatible bottleneck ResNet over uint8 crops, with an optional Linear `fc`."""

    def __init__(self, *, variant: str = "50", width: int = 64, num_classes: int | None = None,
                 head_bias: bool = True,
                 bn_frozen: bool = False, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                 dtype=jnp.bfloat16, param_dtype=jnp.float32, norm_dtype=None, rngs: nnx.Rngs):
        stages = stages_for(variant)
        self.mean, self.std, self.dtype, self.frozen = tuple(mean), tuple(std), dtype, bn_frozen
        self.conv1 = _conv(3, width, 7, 2, 3, dtype, param_dtype, rngs)
        self.bn1 = _bn(width, norm_dtype or dtype, param_dtype, rngs)
        cin = width
        for i, blocks in enumerate(stages):
            planes = width * 2**i
            layer = []
            for j in range(blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                layer.append(Bottleneck(cin, planes, stride, frozen=bn_frozen, dtype=dtype,
                                        param_dtype=param_dtype, norm_dtype=norm_dtype, rngs=rngs))
                cin = planes * EXPANSION
            setattr(self, f"layer{i + 1}", nnx.List(layer))
        self.out_features = cin
        # torch nn.Linear's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        init = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
        self.fc = (nnx.Linear(cin, num_classes, use_bias=head_bias, kernel_init=init, dtype=dtype,
                              param_dtype=param_dtype, rngs=rngs) if num_classes else None)

    def __call__(self, images: jax.Array) -> jax.Array:
        """uint8 [B, H, W, 3] -> [B, num_classes or out_features] in the compute dtype."""
        x = normalize_uint8(images, self.mean, self.std, self.dtype)
        x = jax.nn.relu(self.bn1(self.conv1(x), True if self.frozen else None))
        # torch MaxPool2d(3, 2, padding=1) pads with -inf, as flax's max_pool does.
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i in range(1, 5):
            for block in getattr(self, f"layer{i}"):
                x = block(x)
        x = jnp.mean(x, axis=(1, 2))
        return self.fc(x) if self.fc is not None else x


def _out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def resnet_forward_flops(image_size: int, variant: str = "50", width: int = 64,
                         num_classes: int | None = None) -> float:
    """Forward conv + fc FLOPs of one image (2 per multiply-add; BN, ReLU and pooling not counted)."""
    h = _out(image_size, 7, 2, 3)
    flops = 2.0 * h * h * 7 * 7 * 3 * width
    h = _out(h, 3, 2, 1)
    cin = width
    for i, blocks in enumerate(stages_for(variant)):
        planes = width * 2**i
        for j in range(blocks):
            stride = 2 if (i > 0 and j == 0) else 1
            ho = _out(h, 3, stride, 1)
            cout = planes * EXPANSION
            flops += 2.0 * (h * h * cin * planes + ho * ho * 9 * planes * planes + ho * ho * planes * cout)
            if stride != 1 or cin != cout:
                flops += 2.0 * ho * ho * cin * cout
            h, cin = ho, cout
    if num_classes:
        flops += 2.0 * cin * num_classes
    return flops
