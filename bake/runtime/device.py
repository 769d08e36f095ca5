"""`--device`: checked before anything is loaded, so a typo or a missing accelerator is one
line naming the devices this machine has, not a traceback from deep inside torch."""

from __future__ import annotations

from bake.errors import InputError


def available_devices() -> list[str]:
    """The torch device types usable here: cpu, plus cuda / mps / xpu when present."""
    import torch

    found = ["cpu"]
    for kind in ("cuda", "mps", "xpu"):
        backend = getattr(torch, kind, None) or getattr(torch.backends, kind, None)
        try:
            if backend is not None and backend.is_available():
                found.append(kind)
        except (RuntimeError, AttributeError):
            continue
    return found


def check_device(name: str) -> str:
    """`name` if torch can run on it here (cpu, cuda, cuda:N, mps, xpu), else an InputError
    naming the devices this machine has."""
    import torch

    have = available_devices()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(
            f"--device {name}: not a device name; use one of {', '.join(have)}"
        ) from None
    if device.type not in have:
        raise InputError(
            f"--device {name}: no {device.type} device is available here (torch "
            f"{torch.__version__}); use one of {', '.join(have)}"
        )
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise InputError(f"--device {name}: this machine has {count} CUDA device(s)")
    return name
