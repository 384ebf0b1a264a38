"""Explicit network registry (timm's ``@register_model`` pattern).

A plan names a registry key (``network.architecture``); :func:`build_network` looks the key
up and calls the registered constructor with keyword arguments. Nothing scans packages:
a network exists once the module that defines it has been imported, and
``volseg.networks`` imports every built-in one.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

T = TypeVar("T", bound=Callable[..., torch.nn.Module])

_REGISTRY: dict[str, Callable[..., torch.nn.Module]] = {}


def register_network(name: str) -> Callable[[T], T]:
    """Class (or factory function) decorator that registers a network under ``name``.

    Args:
        name: Registry key as written in ``plans.json`` (``network.architecture``).

    Raises:
        ValueError: ``name`` is already registered by another class (re-importing the same
            module, e.g. ``importlib.reload``, replaces the entry).

    Example:
        >>> @register_network("my_unet")  # doctest: +SKIP
        ... class MyUNet(torch.nn.Module): ...
    """

    def decorator(fn: T) -> T:
        old = _REGISTRY.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"network {name!r} is already registered (by {_REGISTRY[name]!r})")
        _REGISTRY[name] = fn
        return fn

    return decorator


def list_networks() -> list[str]:
    """Sorted registry keys of every registered network."""
    return sorted(_REGISTRY)


def build_network(name: str, **kwargs) -> torch.nn.Module:
    """Build the network registered as ``name`` with constructor keyword arguments.

    Args:
        name: Registry key, e.g. ``"unet"`` or ``"resenc_unet"``.
        **kwargs: Passed unchanged to the constructor (see :class:`volseg.networks.UNet`).

    Raises:
        ValueError: No network is registered under ``name``.

    Example:
        >>> net = build_network("unet", in_channels=1, num_outputs=2, features_per_stage=[8, 16],
        ...                     kernel_sizes=[[3, 3, 3]] * 2, strides=[[1, 1, 1], [2, 2, 2]],
        ...                     n_conv_per_stage=[2, 2], n_conv_per_stage_decoder=[2])
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown network architecture {name!r}; registered: {', '.join(list_networks())}")
    return _REGISTRY[name](**kwargs)
