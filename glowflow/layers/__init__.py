"""Invertible layers sharing one contract: ``y, logdet = layer(x, cond)``, ``x, logdet = layer.inverse(y, cond)``.

The registries of the extension points live beside their layer families: :data:`COUPLINGS`,
:data:`PERMUTATIONS`, :data:`CONDITIONERS` and :data:`DEQUANTIZERS`.
"""

from glowflow.layers.actnorm import ActNorm
from glowflow.layers.base import Flow
from glowflow.layers.conditioners import CONDITIONERS, MLP, GatedResNet, GlowConvNet, ZeroConv2d, ZeroLinear
from glowflow.layers.conv1x1 import DenseMatrix, InvertibleConv1x1, InvertibleLinear, LUMatrix
from glowflow.layers.coupling import COUPLINGS, AdditiveCoupling, AffineCoupling, Coupling
from glowflow.layers.dequantization import (
    DEQUANTIZERS,
    Dequantization,
    UniformDequantization,
    VariationalDequantization,
)
from glowflow.layers.permutations import PERMUTATIONS, ChannelPermutation, ChannelReverse, ChannelShuffle
from glowflow.layers.priors import GaussianPrior, Split
from glowflow.layers.reshape import Squeeze
from glowflow.layers.sequence import FlowSequence
from glowflow.layers.standardize import Standardize
from glowflow.layers.step import FlowStep

__all__ = [
    "COUPLINGS",
    "CONDITIONERS",
    "DEQUANTIZERS",
    "PERMUTATIONS",
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "ChannelPermutation",
    "ChannelReverse",
    "ChannelShuffle",
    "Coupling",
    "DenseMatrix",
    "Dequantization",
    "Flow",
    "FlowSequence",
    "FlowStep",
    "GatedResNet",
    "GaussianPrior",
    "GlowConvNet",
    "InvertibleConv1x1",
    "InvertibleLinear",
    "LUMatrix",
    "MLP",
    "Split",
    "Squeeze",
    "Standardize",
    "UniformDequantization",
    "VariationalDequantization",
    "ZeroConv2d",
    "ZeroLinear",
]
