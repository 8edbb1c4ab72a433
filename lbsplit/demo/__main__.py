"""`make demo`: the rollout plan on a sandbox nginx: init, plan, apply 10 -> 30 -> 100, revert.

Starts a private nginx on loopback with v1/v2 backends, drives the real `lbsplit`
command line, and prints the split it observes through nginx at every stage.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .sandbox import Sandbox, nginx_binary

WHITELIST = ["test_user_001", "test_user_002", "internal_staff_001"]
USERS = [f"user-{i:05d}" for i in range(2000)]


def lbsplit(config: Path, *args: str) -> None:
    shown = "lbsplit " + " ".join(shlex.quote(a) for a in args)
    print(f"\n$ {shown}")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "lbsplit", "--config", str(config), *args], capture_output=True, text=True)
    for line in (result.stdout + result.stderr).strip().splitlines():
        print(f"  {line}")
    print(f"  (exit {result.returncode}, {time.monotonic() - started:.2f}s)")
    if result.returncode != 0:
        raise SystemExit(f"demo stopped: `{shown}` failed")


def observe(sb: Sandbox, previous: set[str]) -> set[str]:
    variants = sb.variants(USERS)
    on_v2 = {u for u, v in zip(USERS, variants) if v == "v2"}
    whitelist = sb.variants(WHITELIST)
    again = {u for u, v in zip(USERS, sb.variants(USERS)) if v == "v2"}
    print(
        f"  observed through nginx: {len(on_v2)}/{len(USERS)} users on v2 ({100 * len(on_v2) / len(USERS):.1f}%), "
        f"whitelist -> {', '.join(whitelist)}, "
        f"sticky: {'yes' if again == on_v2 else 'NO'}, "
        f"still on v2 from the previous stage: {len(previous & on_v2)}/{len(previous)}"
    )
    return on_v2


def main() -> int:
    binary = nginx_binary()
    if binary is None:
        print("nginx is not installed; `make demo` installs it (apt-get install nginx-light)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="lbsplit-demo-") as root:
        sb = Sandbox(Path(root), binary=binary)
        config = sb.write_config(whitelist=WHITELIST)
        print(f"sandbox nginx on 127.0.0.1:{sb.port}; v1 on :{sb.v1_port}, v2 on :{sb.v2_port}")
        print(f"config: {config}")
        try:
            lbsplit(config, "init")
            lbsplit(config, "plan")
            sb.start()
            on_v2: set[str] = set()
            print(f"  observed through nginx: {sb.variants(USERS).count('v2')} users on v2")
            for percent, reason in (("10", "stage 2.1: whitelist + 10%"), ("30", "stage 2.2"), ("100", "stage 2.3: full rollout")):
                lbsplit(config, "apply", percent, "--reason", reason)
                on_v2 = observe(sb, on_v2)
            lbsplit(config, "revert", "--reason", "emergency rollback drill")
            observe(sb, on_v2)
            lbsplit(config, "status")
            lbsplit(config, "history")
        finally:
            sb.stop()
    print("\ndemo finished: sandbox nginx stopped and removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
