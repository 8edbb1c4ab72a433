"""The one subprocess boundary: nginx -t, reload, finding the master, and what the running nginx serves.

Besides running nginx, it asks lbsplit's own status page (on loopback) which generation
nginx serves: a plain HTTP/1.0 GET over a socket, so this module needs no HTTP library.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .. import progress
from ..config import NginxSettings
from ..errors import EnvironmentProblem, NginxTestFailed, ReloadFailed
from .dialect import CONTROL_PATH, ENTRY_FILE, STATUS_PATH, TOKEN_HEADER, V1_CHECK_PATH, check_config, parse_status

PLACEHOLDER = "/lbsplit-revert-config-placeholder/lbsplit.conf"  # where site_copy's include of lbsplit.conf points

LUA_MODULES = "/usr/lib/nginx/modules"


def lua_modules() -> tuple[str, ...]:
    """Debian's ndk and lua modules, in load order, for a private check config (empty when not installed)."""
    found = tuple(f"{LUA_MODULES}/{m}" for m in ("ndk_http_module.so", "ngx_http_lua_module.so"))
    return found if all(Path(m).is_file() for m in found) else ()


COMMAND_TIMEOUT = 300  # nginx -t on a 1M-id whitelist takes seconds, not minutes


def _run(argv: list[str], what: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    except FileNotFoundError:
        raise EnvironmentProblem(
            f"{what}: {argv[0]!r} not found; install nginx or set nginx.binary (or nginx.reload_command)"
        ) from None
    except PermissionError:
        raise EnvironmentProblem(f"{what}: {argv[0]!r} is not executable by this user") from None
    except subprocess.TimeoutExpired:
        raise EnvironmentProblem(f"{what}: {' '.join(argv)} did not finish in {COMMAND_TIMEOUT}s") from None


@dataclass(frozen=True)
class Dump:
    files: tuple[str, ...]
    listens: tuple[tuple[str, str], ...]  # (file, the listen directive's address)
    lua_rewrites: tuple[tuple[str, int], ...] = ()  # (file, line) of rewrite_by_lua* directives
    globs: tuple[tuple[str, str], ...] = ()  # (file, pattern) of include directives with a wildcard
    prefix: str = ""  # where relative include patterns start (nginx's conf folder)
    access_logs: tuple[tuple[str, str, str], ...] = ()  # (file, log path, format name) of access_log directives
    http11: bool = False  # some proxy_http_version 1.1 (what upstream keepalive needs) is in the config

    def formats_of(self, log: Path) -> list[str]:
        """The format names nginx writes `log` with, as "FORMAT (in FILE)"; "combined" when none is named."""
        target = os.path.normpath(str(log))
        return [f"{fmt} (in {file})" for file, path, fmt in self.access_logs if os.path.normpath(path) == target]

    def glob_reading(self, path: Path) -> list[str]:
        """Wildcard includes that pick up `path` (a file or a folder), as "file: include PATTERN"."""
        target = os.path.normpath(str(path))
        found = []
        for file, pattern in self.globs:
            full = pattern if pattern.startswith("/") else os.path.join(self.prefix or os.path.dirname(file), pattern)
            if fnmatch.fnmatchcase(target, os.path.normpath(full)):
                found.append(f"{file}: include {pattern}")
        return found

    def own_lua_rewrites(self, own_file: Path) -> list[str]:
        """rewrite_by_lua* handlers outside `own_file`, as "file:line": they replace lbsplit's http-level one."""
        return [f"{file}:{line}" for file, line in self.lua_rewrites if not _same_path(Path(file), own_file)]

    def includes(self, path: Path) -> bool:
        return any(_same_path(Path(f), path) or f == str(path) for f in self.files)

    def clashes(self, address: str, own_file: Path) -> list[str]:
        """Listen directives outside `own_file` that take the same address:port, as "file: listen X"."""
        host, _, port = address.rpartition(":")
        found = []
        for file, listen in self.listens:
            if _same_path(Path(file), own_file) or listen.startswith("unix:"):
                continue
            their_host, sep, their_port = listen.rpartition(":")
            if not sep:
                their_host, their_port = "*", listen
            if their_port != port:
                continue
            if their_host in ("*", "0.0.0.0") and not host.startswith("[") or their_host == host \
                    or {their_host, host} <= {"localhost", "127.0.0.1"}:
                found.append(f"{file}: listen {listen}")
        return found


_FILE_LINE = re.compile(r"^# configuration file (.+):$")
_LISTEN = re.compile(r"(?:^|[\s;{])listen\s+([^\s;]+)")
_INCLUDE = re.compile(r"(?:^|[\s;{])include\s+([^\s;]+)")
_HTTP11 = re.compile(r"(?:^|[\s;{])proxy_http_version\s+1\.1\s*;")
_ACCESS_LOG = re.compile(r"(?:^|[\s;{])access_log\s+([^;]+);")
_LUA_REWRITE = re.compile(r"(?:^|[\s;{])rewrite_by_lua(?:_block|_file)?\s")


def parse_dump(text: str, prefix: str = "") -> Dump:
    """The files, listen addresses and wildcard includes of `nginx -T` output."""
    files, listens, rewrites, globs, logs, current, number = [], [], [], [], [], "", 0
    http11 = False
    for line in text.splitlines():
        match = _FILE_LINE.match(line)
        if match:
            current, number = match.group(1), 0
            files.append(current)
            continue
        number += 1
        code = line.split("#", 1)[0]
        if "listen" in code:
            listens.extend((current, m.group(1)) for m in _LISTEN.finditer(code))
        if "rewrite_by_lua" in code and _LUA_REWRITE.search(code):
            rewrites.append((current, number))
        if "access_log" in code:
            for m in _ACCESS_LOG.finditer(code):
                words = m.group(1).split()
                if words and words[0] != "off":
                    fmt = words[1] if len(words) > 1 and "=" not in words[1] else "combined"
                    logs.append((current, words[0].strip("'\""), fmt.strip("'\"")))
        if "proxy_http_version" in code and _HTTP11.search(code):
            http11 = True
        if "include" in code:
            globs.extend((current, m.group(1).strip("'\"")) for m in _INCLUDE.finditer(code) if any(
                c in m.group(1) for c in "*?["))
    return Dump(tuple(files), tuple(listens), tuple(rewrites), tuple(globs), prefix, tuple(logs), http11)


def _option_values(args: list[str]) -> dict[str, str]:
    """-c/-p values of nginx's command line ("-c FILE" or "-cFILE")."""
    found = {}
    for i, arg in enumerate(args):
        for flag in ("c", "p"):
            if arg == f"-{flag}" and i + 1 < len(args):
                found[flag] = args[i + 1]
            elif arg.startswith(f"-{flag}") and len(arg) > 2 and not arg.startswith(("-c ", "-p ")):
                found[flag] = arg[2:]
    return found


def _same_path(a: Path, b: Path) -> bool | None:
    """Do two paths name the same file or folder? None when that cannot be told."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return None if not (a.is_absolute() and b.is_absolute()) else os.path.normpath(a) == os.path.normpath(b)


def parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[1]) if len(fields) > 1 else None


def is_master(pid: int) -> bool:
    """Is `pid` an nginx master process?"""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"nginx: master process")
    except OSError:
        return False


def is_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie waiting for its parent to reap it counts as ended."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _clean(stderr: str) -> str:
    return "\n".join(line for line in stderr.strip().splitlines() if line.strip()) or "(nginx printed nothing)"


_SERVED_AFTER: dict[str, float] = {}  # nginx.conf -> seconds its last reload took to be served, in this process
_PID_FILES: dict[tuple, Path] = {}  # (nginx.conf, its stat, prefix, binary) -> the pid file it names


class Nginx:
    """One nginx installation as the config describes it."""

    def __init__(self, settings: NginxSettings):
        self.settings = settings
        self._compiled: dict[str, str] | None = None
        self._pid_file: Path | None = None

    # checking and reloading
    def test(self) -> None:
        """Run `nginx -t` on the user's whole config; raise NginxTestFailed with nginx's own words."""
        result = _run(self.settings.base_argv() + ["-t", "-q"], "nginx -t")
        if result.returncode != 0:
            raise NginxTestFailed(_clean(result.stderr))

    def test_snippet(self, text: str, modules: tuple[str, ...] = ()) -> str | None:
        """nginx -t on `text` as lbsplit.conf inside a minimal private config; None when it passes.

        Used for the revert config before a widening: it never touches the live file,
        so a crash here leaves nothing to repair. The snippet has the same shape as the
        live lbsplit.conf, which the user's whole config already accepts.
        """
        with tempfile.TemporaryDirectory(prefix="lbsplit-test-") as tmp:
            root = Path(tmp)
            (root / ENTRY_FILE).write_text(text, encoding="utf-8")
            (root / "nginx.conf").write_text(check_config(root, modules), encoding="utf-8")
            result = _run([self.settings.binary, "-p", str(root), "-c", str(root / "nginx.conf"), "-t", "-q"], "nginx -t")
        return None if result.returncode == 0 else _clean(result.stderr).replace(str(root) + "/", "")

    def site_copy(self):
        """The site's whole config as one text whose include of lbsplit.conf names PLACEHOLDER, with what it
        was made from (a flatten.SiteCopy). Raises CannotFlatten."""
        from .flatten import flattened  # noqa: PLC0415 - only the gate's revert check needs it

        return flattened(Path(self.settings.conf), self.settings.live_file, Path(PLACEHOLDER))

    def site_copy_is_current(self, copy) -> bool:
        """A SiteCopy made by site_copy() for this config, from files that are all unchanged since."""
        return copy.current(Path(self.settings.conf), self.settings.live_file, Path(PLACEHOLDER))

    def test_in_site(self, text: str, copy: str) -> str | None:
        """nginx -t on the site's whole config (`copy`, from site_copy) with `text` as lbsplit.conf; None when it passes.

        The live file is never touched: the copy is written next to nginx.conf (so relative paths mean what
        they mean there), and its include of lbsplit.conf names a private file holding `text`. Raises
        CannotFlatten when the copy cannot judge: nginx -t rejects it even with the live lbsplit.conf.
        """
        from .flatten import CannotFlatten  # noqa: PLC0415 - crossplane: only the gate's revert check needs it

        live = self.settings.live_file
        with tempfile.TemporaryDirectory(prefix="lbsplit-test-") as tmp:
            replacement = Path(tmp) / ENTRY_FILE
            replacement.write_text(text, encoding="utf-8")
            error = self._test_flattened(copy.replace(PLACEHOLDER, str(replacement)))
            if error is None:
                return None
            control = self._test_flattened(copy.replace(PLACEHOLDER, str(live)))
        if control is not None:
            raise CannotFlatten(f"nginx -t rejects lbsplit's flattened copy of {self.settings.conf} even with the "
                                f"live {live.name}: {control.splitlines()[0]}")
        return error.replace(str(replacement), f"(the revert {ENTRY_FILE})")

    def _test_flattened(self, whole: str) -> str | None:
        from .flatten import CannotFlatten  # noqa: PLC0415 - crossplane: only the gate's revert check needs it

        conf = Path(self.settings.conf)
        check = conf.parent / f".lbsplit-tmp-check-{os.getpid()}"  # next to nginx.conf; repair sweeps a leftover
        try:
            check.write_text(whole, encoding="utf-8")
        except OSError as e:
            raise CannotFlatten(f"cannot write a check copy next to {conf}: {e.strerror}") from None
        try:
            argv = [self.settings.binary] + (["-p", str(self.settings.prefix)] if self.settings.prefix else [])
            result = _run(argv + ["-c", str(check), "-t", "-q"], "nginx -t")
        finally:
            check.unlink(missing_ok=True)
        return None if result.returncode == 0 else _clean(result.stderr).replace(str(check), str(conf))

    def identity(self) -> str:
        """Which nginx binary this is (path, size, mtime): a cached `nginx -t` verdict is only as good as this."""
        path = shutil.which(self.settings.binary) or self.settings.binary
        try:
            st = os.stat(path)
        except OSError:
            return path
        return f"{path}:{st.st_size}:{st.st_mtime_ns}"

    def dump(self) -> "Dump | None":
        """`nginx -T`: the files the whole config includes and their listen addresses; None if it fails."""
        result = _run(self.settings.base_argv() + ["-T"], "nginx -T")
        if result.returncode != 0:
            return None
        return parse_dump(result.stdout, prefix=str(Path(self.settings.conf).parent))  # nginx's conf prefix

    def reload(self, master: int | None = None) -> None:
        """Ask the master to reload. It returns at once; the switch happens later (see wait_serving).

        With no reload_command and a known master, this is SIGHUP to that master, which is
        what `nginx -s reload` sends too; but `nginx -s reload` first parses the whole config
        again only to find the pid file (as long as `nginx -t` itself: 0.09 s at 100k
        whitelisted ids, over 2 s at 1M), and lbsplit has just run `nginx -t` on it.
        """
        if master is not None and not self.settings.reload_command:
            try:
                os.kill(master, signal.SIGHUP)
            except ProcessLookupError:
                raise ReloadFailed(f"the nginx master (pid {master}) exited before it could be told to reload") from None
            except PermissionError:
                raise ReloadFailed(
                    f"not allowed to signal the nginx master (pid {master}): run lbsplit as the user nginx's master "
                    "runs as (usually root), or set nginx.reload_command"
                ) from None
            return
        argv = list(self.settings.reload_command) or self.settings.base_argv() + ["-s", "reload"]
        result = _run(argv, "reload")
        if result.returncode != 0:
            raise ReloadFailed(f"{' '.join(argv)} failed: {_clean(result.stderr)}")

    # what is running
    def compiled_defaults(self) -> dict[str, str]:
        """--prefix, --conf-path and --pid-path from `nginx -V`."""
        if self._compiled is None:
            result = _run([self.settings.binary, "-V"], "nginx -V")
            self._compiled = dict(re.findall(r"--(prefix|pid-path|conf-path)=(\S+)", result.stderr))
        return self._compiled

    def pid_file(self) -> Path:
        """Where the master writes its pid: the config's setting, the nginx.conf `pid`, or nginx's default."""
        if self._pid_file is None:
            self._pid_file = self._find_pid_file()
        return self._pid_file

    def _find_pid_file(self) -> Path:
        if self.settings.pid_file is not None:
            return self.settings.pid_file
        try:
            st = self.settings.conf.stat()
            seen = (str(self.settings.conf), st.st_mtime_ns, st.st_size, st.st_ino, self.settings.prefix,
                    self.settings.binary)
        except OSError:
            seen = None
        if seen is not None and seen in _PID_FILES:
            return _PID_FILES[seen]  # a long-lived process (the fleet agent) parses an unchanged nginx.conf once
        found = self._parse_pid_file()
        if seen is not None:
            _PID_FILES[seen] = found
        return found

    def _parse_pid_file(self) -> Path:
        import crossplane  # only when the pid file is not configured

        prefix = self.settings.prefix or Path(self.compiled_defaults().get("prefix", "/usr/share/nginx"))
        try:
            payload = crossplane.parse(str(self.settings.conf), single=True, check_ctx=False, check_args=False, comments=False)
            parsed = payload["config"][0]["parsed"] if payload["config"] else []
        except (OSError, IndexError, ValueError):
            parsed = []
        for directive in parsed:
            if directive["directive"] == "pid" and directive["args"]:
                path = Path(directive["args"][0])
                return path if path.is_absolute() else prefix / path
        default = Path(self.compiled_defaults().get("pid-path", "/run/nginx.pid"))
        return default if default.is_absolute() else prefix / default

    def master_pid(self) -> int | None:
        """This nginx's running master, or None when it is not running.

        The pid file decides only when it names a master started with this config. When
        it is missing, stale, or names another nginx, the status page decides: if it
        answers, nginx runs, and its worker's parent is the master; if that parent is no
        master of this config (orphaned workers, say), lbsplit fails loudly rather than
        saying "not running" while nginx serves.
        """
        pid_file = self.pid_file()
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            pid = None
        if pid is not None and is_master(pid) and self.started_with_this_config(pid):
            return pid
        answer = self.serving()
        if answer is None:
            return None
        worker = answer.get("pid")
        parent = parent_pid(worker) if isinstance(worker, int) else None
        if parent is not None and is_master(parent) and self.started_with_this_config(parent):
            return parent
        why = ("is missing or unreadable" if pid is None else
               f"names pid {pid}, which is not a master of {self.settings.conf}")
        owner = f"its worker {worker}'s parent is {parent}, not a master" if isinstance(worker, int) else "it does not say its pid"
        raise EnvironmentProblem(
            f"nginx answers on {self.settings.status_listen} (generation {answer.get('generation')}) but lbsplit cannot "
            f"find its master: the pid file {pid_file} {why}, and {owner}. Set nginx.pid_file to the `pid` of your "
            "nginx.conf (or restart nginx if its master was killed)"
        )

    def started_with_this_config(self, pid: int) -> bool:
        """Was master `pid` started with this config's -c (and -p, when both name one)?"""
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace").replace("\0", " ")
        except OSError:
            return False
        args = title.split()[3:]  # after "nginx: master process BINARY"
        given = _option_values(args)
        defaults = self.compiled_defaults() if "c" not in given or "p" not in given else {}
        prefix = Path(given.get("p") or defaults.get("prefix", "/usr/share/nginx"))
        conf = Path(given.get("c") or defaults.get("conf-path", "conf/nginx.conf"))
        if not conf.is_absolute():
            conf = prefix / conf
        if _same_path(conf, self.settings.conf) is False:
            return False
        if "p" in given and self.settings.prefix is not None:
            return _same_path(prefix, self.settings.prefix) is not False
        return True

    @staticmethod
    def worker_pids(master: int) -> set[int]:
        """Children of the master (workers, cache helpers)."""
        try:
            # Linux lists a thread's children here (CONFIG_PROC_CHILDREN); nginx's master is single-threaded.
            return {int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()}
        except (OSError, ValueError):
            return Nginx.children_by_scan(master)  # no such file on this kernel

    @staticmethod
    def children_by_scan(master: int) -> set[int]:
        """Children of the master, found by every process's parent pid."""
        found = set()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            # the second field is "(comm)" and may contain spaces; ppid is the 2nd field after it
            fields = stat.rsplit(")", 1)[-1].split()
            if len(fields) > 1 and fields[1] == str(master):
                found.add(int(entry.name))
        return found

    @staticmethod
    def still_accepting(pids: set[int]) -> set[int]:
        """The old workers that have not yet closed their listening sockets.

        A worker told to quit retitles itself "worker process is shutting down" and
        then closes its listeners; until then it may still take new connections with
        the old config (nginx sleeps 100 ms between starting new workers and stopping old ones).
        """
        alive = set()
        for pid in pids:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"shutting down" not in cmdline and cmdline.startswith(b"nginx: worker process"):
                alive.add(pid)
        return alive

    def _exchange(self, request: bytes) -> tuple[bytes, bytes] | None:
        """One HTTP/1.0 exchange with the status server: (status code, body), or None when nothing answers.

        A plain socket: http.client would cost ~20 ms of imports on every command.
        """
        host, _, port = self.settings.status_listen.rpartition(":")
        try:
            # The host as bytes: a str makes getaddrinfo load the idna codec (~5 ms) on every command.
            with socket.create_connection((host.strip("[]").encode(), int(port)), timeout=2) as sock:
                sock.sendall(request)
                chunks, size = [], 0
                while size < 65536:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
        except OSError:
            return None
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].split()
        return (status_line[1] if len(status_line) >= 2 else b""), body

    def serving(self) -> dict | None:
        """What nginx's lbsplit status page answers right now, or None when nothing answers."""
        answer = self._exchange(f"GET {STATUS_PATH} HTTP/1.0\r\nHost: lbsplit\r\n\r\n".encode())
        if answer is None or answer[0] != b"200":
            return None
        return parse_status(answer[1])

    def ask_v1(self, times: int = 5) -> list[str]:
        """Send `times` requests to upstream lbsplit_v1 through nginx; each answer's status ("" for none)."""
        codes = []
        for _ in range(times):
            answer = self._exchange(f"GET {V1_CHECK_PATH} HTTP/1.0\r\nHost: lbsplit\r\n\r\n".encode())
            codes.append(answer[0].decode("ascii", "replace") if answer else "")
        return codes

    def set_live(self, generation: int, stage: int, token: str) -> None:
        """The lua runtime: set the stage every worker reads (hundredths, -1: v2 off). No reload."""
        # seq: microseconds of wall time, which only grows from one request to the next; the endpoint refuses
        # a seq not above the last (a replayed request). A clock set back fails the request (a revert then reloads).
        seq = max(time.time_ns() // 1000, 1)
        body = json.dumps({"generation": generation, "stage": stage, "seq": seq}, separators=(",", ":")).encode()
        request = (f"POST {CONTROL_PATH} HTTP/1.0\r\nHost: lbsplit\r\n{TOKEN_HEADER}: {token}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
        answer = self._exchange(request)
        where = f"http://{self.settings.status_listen}{CONTROL_PATH}"
        if answer is None:
            raise ReloadFailed(f"nothing answers at {where}: is nginx running with lbsplit.conf included?")
        if answer[0] != b"200":
            said = answer[1].decode("utf-8", errors="replace").strip()[:200]
            if answer[0] == b"404":
                said = "no control endpoint there: nginx still runs a reload-runtime lbsplit.conf"
            raise ReloadFailed(f"{where} refused the stage ({answer[0].decode(errors='replace')}): {said}")

    def wait_live(self, generation: int, timeout: float) -> bool:
        """The lua runtime: wait until the status page reports `generation` from every worker."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            answer = self.serving()
            if answer and answer.get("generation") == generation:
                seen = answer.get("workers")
                if isinstance(seen, list) and seen and all(g == generation for g in seen):
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)

    def serving_generation(self) -> int | None:
        answer = self.serving()
        return answer.get("generation") if isinstance(answer, dict) else None

    def wait_settled(self, generation: int, timeout: float, quiet: float = 0.3) -> bool:
        """Wait until `generation` answers and the set of accepting workers has not changed for `quiet` s.

        For an undo that reloads while an earlier reload may still be in flight: that reload's
        workers (the config being undone) can start after the old ones were listed, and accept
        alongside the restored ones for nginx's 100 ms overlap. Once the accepting set holds still
        for longer than that overlap, no worker with the undone config is left to take a connection.
        """
        deadline = time.monotonic() + timeout
        master = self.master_pid()
        seen, since = None, time.monotonic()
        while True:
            now = time.monotonic()
            accepting = self.still_accepting(self.worker_pids(master)) if master else set()
            if accepting != seen or self.serving_generation() != generation:
                seen, since = accepting, now
            elif now - since >= quiet:
                return True
            if now >= deadline:
                return False
            time.sleep(0.02)

    def wait_serving(self, generation: int, old_workers: set[int], timeout: float) -> bool:
        """Wait until new connections can only reach the config of `generation`.

        It asks every 5 ms. A long-lived process (the fleet agent) remembers how long this nginx
        took last time and does not ask during the first 70% of that (at most 0.1 s): with ten
        agents on one machine, their knocking took CPU from the reloads they waited for.
        """
        started = time.monotonic()
        deadline = started + timeout
        told = False
        learned = _SERVED_AFTER.get(str(self.settings.conf))
        while True:
            if self.serving_generation() == generation and not self.still_accepting(old_workers):
                _SERVED_AFTER[str(self.settings.conf)] = time.monotonic() - started
                return True
            if not told and time.monotonic() - started > progress.AFTER:
                progress.say(f"waiting for nginx to serve generation {generation} (up to {timeout:g}s)")
                told = True
            now = time.monotonic()
            if now >= deadline:
                return False
            if learned:  # at most 0.1 s: a reload that got much faster (a smaller whitelist) costs little
                time.sleep(min(0.7 * learned, 0.1, deadline - now))
                learned = None
            else:
                time.sleep(0.005)
