"""Peak resident set size of a command, as ``/usr/bin/time -v`` reports it (GNU time).

A fresh process per measurement: ``getrusage``'s ``ru_maxrss`` of a child started from a big
benchmark process would carry the parent's peak across ``fork``/``exec``.
"""

from __future__ import annotations

import re
import subprocess


def peak_rss_mib(command: list[str]) -> tuple[float, str]:
    """Run ``command``; return its peak RSS in MiB and its standard output."""
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    peak_kib = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    return int(peak_kib.group(1)) / 1024, done.stdout
