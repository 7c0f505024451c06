"""How much memory this process has held at most."""

from __future__ import annotations

import resource


def peak_rss_bytes() -> int:
    """The process's peak resident set: VmHWM on Linux (ru_maxrss would carry a parent's peak
    across exec, e.g. that of the process that started a Ray worker), else ru_maxrss."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
