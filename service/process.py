"""Process-wide set-up, in one place and once per process start: logging, torch's
thread pool, Pillow's decompression-bomb limit, and the garbage collector."""

from __future__ import annotations

import gc

import torch

from service.imaging import limit_pillow_pixels
from service.observability import configure_logging
from service.runtime import torch_threads
from service.settings import Settings


def configure_process(settings: Settings) -> None:
    """Before any model loads: these are shared by every model the process serves."""
    configure_logging(settings.log_level)
    limit_pillow_pixels(settings.max_pixels_per_image)
    torch.set_num_threads(torch_threads(settings.torch_threads))


def freeze_start_up_objects() -> None:
    """Move what start-up made (torch, FastAPI, the models) out of the collector's
    reach: full collections over them were the p99 latency (110 ms -> 46 ms at c=32)."""
    gc.freeze()
