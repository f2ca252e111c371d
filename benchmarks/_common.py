"""Shared by the benchmark scripts: memory measurement and the LoRA target modules."""

from __future__ import annotations

import resource
from pathlib import Path

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM). ru_maxrss would also count the RSS a parent had
    when it forked this process, which Linux carries across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
