"""One measurement of access-log reading, in its own process (so its peak RSS is its own).

    python -m benchmarks.logparse FILE lbsplit|split-only
"""

import json
import os
import sys
import time

from lbsplit.watch.logsource import Cursor, Window, read_appended


def main() -> None:
    path, mode = sys.argv[1], sys.argv[2]
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    started = time.perf_counter()
    lines = 0
    if mode == "lbsplit":
        window = Window()
        oldest = float(sys.argv[3])

        def feed(text):
            nonlocal lines
            used, bad = window.add_text(text, {}, oldest)
            lines += used + bad

        read_appended(path, Cursor(os.stat(path).st_ino, 0), feed)
        window.prune(oldest)
    else:  # the floor of any Python line parser: read and split every line, nothing else
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line.split("\t")
                lines += 1
    seconds = time.perf_counter() - started
    # VmHWM belongs to this process image; ru_maxrss would carry over the forking parent's peak.
    hwm_kib = int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")))
    print(json.dumps({"lines": lines, "seconds": seconds, "maxrss_mib": hwm_kib / 1024}))


if __name__ == "__main__":
    main()
