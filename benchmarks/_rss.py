"""Peak resident memory of this process, for the benchmarks (Linux /proc).

Not ``resource.getrusage(...).ru_maxrss``: a child process started from a large parent
inherits the parent's high-water mark there, so a fresh subprocess's own peak is hidden
(every setting read the parent's ~1 GB). ``VmHWM`` belongs to this process's own memory and
``/proc/self/clear_refs`` resets it, so a phase's peak can be measured on its own.
"""

from __future__ import annotations

__all__ = ["peak_mib", "rss_mib", "start_peak"]


def _status_mib(key: str) -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def rss_mib() -> float:
    """Resident memory now, MiB."""
    return _status_mib("VmRSS")


def peak_mib() -> float:
    """Peak resident memory since the process started or :func:`start_peak`, MiB."""
    return _status_mib("VmHWM")


def start_peak() -> float:
    """Reset the peak to the current RSS (``clear_refs`` 5); returns the RSS now, MiB."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
        fh.write("5")
    return rss_mib()
