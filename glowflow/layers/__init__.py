"""Invertible layers sharing one contract: ``y, logdet = layer(x, cond)``, ``x, logdet = layer.inverse(y, cond)``."""

from glowflow.layers.actnorm import ActNorm
from glowflow.layers.base import Flow, FlowSequence
from glowflow.layers.conditioners import MLP, GatedResNet, GlowConvNet, ZeroConv2d, ZeroLinear
from glowflow.layers.conv1x1 import DenseMatrix, InvertibleConv1x1, InvertibleLinear, LUMatrix
from glowflow.layers.coupling import AdditiveCoupling, AffineCoupling
from glowflow.layers.dequantization import UniformDequantization, VariationalDequantization
from glowflow.layers.permutations import ChannelPermutation, ChannelReverse, ChannelShuffle
from glowflow.layers.priors import GaussianPrior, Split
from glowflow.layers.reshape import Squeeze

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "ChannelPermutation",
    "ChannelReverse",
    "ChannelShuffle",
    "DenseMatrix",
    "Flow",
    "FlowSequence",
    "GatedResNet",
    "GaussianPrior",
    "GlowConvNet",
    "InvertibleConv1x1",
    "InvertibleLinear",
    "LUMatrix",
    "MLP",
    "Split",
    "Squeeze",
    "UniformDequantization",
    "VariationalDequantization",
    "ZeroConv2d",
    "ZeroLinear",
]
