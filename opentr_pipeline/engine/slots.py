"""How many transcriptions each device admits at once, wherever the engine lives."""

from __future__ import annotations

import socket

from opentr_pipeline.engine.devices import plan_devices
from opentr_pipeline.settings import Settings


def device_slots(settings: Settings) -> dict[str, int]:
    """Slots per GPU as `host/device`: the live resident workers', or this host's plan.

    A GPU is a device on a host: cuda:0 on two hosts is two GPUs."""
    if settings.engine.resident:
        from opentr_pipeline.engine.broker import live_engines

        return {f"{e['host']}/{e['device']}": e["slots"] for e in live_engines(settings.engine)}
    return {f"{socket.gethostname()}/{device.label}": device.workers for device in plan_devices(settings.devices)}


def total_slots(settings: Settings) -> int:
    """What the `gpu` pool admits: the live resident workers' slots if any, else this host's plan."""
    if settings.engine.resident:
        slots = sum(device_slots(settings).values())
        if slots:
            return slots
    return sum(device.workers for device in plan_devices(settings.devices))
