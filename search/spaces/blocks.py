"""Building blocks shared by the mobile spaces (ProxylessNAS, OFA MobileNetV3, FBNet)."""

from __future__ import annotations

from hwlat.search.spaces.graph import Net, Tensor


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor``, never below 90% of ``value`` (MobileNet's rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def inverted_residual(
    net: Net,
    x: Tensor,
    out: int,
    kernel: int,
    stride: int,
    mid: int,
    act: str,
    expand: bool = True,
    groups: int = 1,
    se_mid: int = 0,
) -> Tensor:
    """Mobile inverted bottleneck: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 linear [+ x].

    ``groups`` > 1 makes both 1x1 convs group convs with a channel shuffle after the
    expansion (FBNet's g2 blocks); ``se_mid`` > 0 adds squeeze-and-excite with that many
    reduced channels (OFA MobileNetV3). The residual is used when the shape is unchanged.
    """
    h = x
    if expand:
        h = net.conv(h, mid, 1, groups=groups, act=act)
        if groups > 1:
            h = net.shuffle(h, groups)
    h = net.conv(h, mid, kernel, stride=stride, groups=mid, act=act)
    if se_mid:
        h = squeeze_excite(net, h, se_mid)
    y = net.conv(h, out, 1, groups=groups)
    return net.add(y, x) if stride == 1 and x.shape[1] == out else y


def squeeze_excite(net: Net, x: Tensor, mid: int) -> Tensor:
    """x * hardsigmoid(conv(relu(conv(avgpool(x))))) with biased convs, as in MobileNetV3."""
    s = net.gap(x)
    s = net.conv(s, mid, 1, act="relu", bn=False, bias=True)
    s = net.conv(s, x.shape[1], 1, act="hardsigmoid", bn=False, bias=True)
    return net.mul(x, s)
