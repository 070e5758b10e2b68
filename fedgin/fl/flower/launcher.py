"""A Flower federation on one machine: a SuperLink and one SuperNode per site as separate processes on
127.0.0.1 (Flower's deployment runtime, no simulation), the coordinator's ``flwr`` CLI, and the run of a fedgin
config through them (``fedgin train --engine flower``).

Every process gets its own process group and Flower home directory; :meth:`LocalFederation.stop` (also on
leaving the ``with`` block, whatever happened) ends each group and whatever the processes started.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fedgin.config import RunConfig, dump
from fedgin.fl.flower.certs import NodeKeys, ServerCertificates, write_node_keys, write_server_certificates
from fedgin.fl.flower.project import write_project
from fedgin.fl.rundir import RunDir
from fedgin.train.data import phantom_dir

HOST = "127.0.0.1"
CONNECTION = "fedgin"  # the flwr CLI's name for the SuperLink


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def executable(name: str) -> str:
    """A Flower command, from this Python's environment first."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.is_file() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found: install Flower with pip install 'fedgin[fl]'")
    return found


def node_config(values: dict[str, str]) -> str:
    """``--node-config`` text: ``key='value'`` pairs (TOML literal strings)."""
    for key, value in values.items():
        if "'" in value or "\n" in value:
            raise ValueError(f"node config {key}={value!r}: quotes and newlines are not supported")
    return " ".join(f"{k}='{v}'" for k, v in values.items())


def _descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (read from /proc; empty where there is none)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@dataclass
class RunStatus:
    run_id: int
    status: str  # e.g. "finished:completed", "finished:failed"
    details: str

    @property
    def ok(self) -> bool:
        return self.status == "finished:completed"


class LocalFederation:
    """SuperLink + SuperNodes on 127.0.0.1 under ``workdir`` (logs in ``workdir/logs``).

    ``secure``: TLS with a fresh CA and SuperNode authentication with registered keys (the documented
    deployment); otherwise Flower's ``--insecure`` mode.
    """

    def __init__(self, workdir: str | Path, *, secure: bool = True) -> None:
        self.workdir = Path(workdir)
        self.logs = self.workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.secure = secure
        self.port = free_port()
        self.address = f"{HOST}:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.certs: ServerCertificates | None = None
        if secure:
            self.certs = write_server_certificates(self.workdir / "certs", [HOST])

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def env(self, home: str) -> dict[str, str]:
        env = dict(os.environ)
        env["FLWR_HOME"] = str(self.workdir / "home" / home)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        if name in self.procs and self.procs[name].poll() is None:
            raise ValueError(f"{name} is already running")
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self.env(name), cwd=self.workdir, start_new_session=True)
        self.procs[name] = proc
        return proc

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.logs / f"{name}.log"
        return "".join(path.read_text(errors="replace").splitlines(True)[-lines:]) if path.is_file() else ""

    def start_superlink(self, timeout: float = 60.0) -> None:
        argv = [executable("flower-superlink"), "--host", HOST, "--port", str(self.port),
                "--disable-runtime-dependency-installation"]
        if self.certs:
            argv += ["--ssl-ca-certfile", str(self.certs.ca), "--ssl-certfile", str(self.certs.cert),
                     "--ssl-keyfile", str(self.certs.key), "--enable-supernode-auth"]
        else:
            argv += ["--insecure"]
        proc = self._spawn("superlink", argv)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the SuperLink exited ({proc.returncode}):\n{self.log_tail('superlink')}")
            with socket.socket() as s:
                if s.connect_ex((HOST, self.port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the SuperLink did not open {self.address} within {timeout:g} s")
            time.sleep(0.2)
        home = self.workdir / "home" / "cli"
        home.mkdir(parents=True, exist_ok=True)
        security = f"root-certificates = '{self.certs.ca}'" if self.certs else "insecure = true"
        (home / "config.toml").write_text(f"[superlink]\ndefault = '{CONNECTION}'\n\n[superlink.{CONNECTION}]\n"
                                          f"address = '{self.address}'\n{security}\n")

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """The coordinator's ``flwr`` CLI against this SuperLink."""
        return subprocess.run([executable("flwr"), *args], env=self.env("cli"), cwd=self.workdir,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def node_keys(self, site: str) -> NodeKeys:
        """A new key pair for ``site``, registered at the SuperLink."""
        keys = write_node_keys(self.workdir / "keys", site)
        res = self.flwr("supernode", "register", str(keys.public), CONNECTION)
        if res.returncode:
            raise RuntimeError(f"flwr supernode register {keys.public} failed:\n{res.stdout}{res.stderr}")
        return keys

    def start_supernode(self, site: str, config: dict[str, str], *, root_certificates: Path | None = None,
                        private_key: Path | None = None, insecure: bool | None = None) -> subprocess.Popen:
        """A SuperNode for ``site`` with ``config`` as node config. In a secure federation it trusts this CA
        and gets a registered key unless ``root_certificates``/``private_key`` say otherwise."""
        argv = [executable("flower-supernode"), "--superlink", self.address, "--host", HOST,
                "--port", str(free_port()), "--node-config", node_config({"site": site, **config})]
        if insecure if insecure is not None else not self.secure:
            argv += ["--insecure"]
        else:
            argv += ["--root-certificates", str(root_certificates or self.certs.ca),
                     "--auth-supernode-private-key", str(private_key or self.node_keys(site).private)]
        return self._spawn(f"supernode-{site}", argv)

    def submit(self, app_dir: Path) -> int:
        """``flwr run`` of the app project in ``app_dir``; returns the run id."""
        res = self.flwr("run", str(app_dir), CONNECTION, "--format", "json")
        try:
            return int(json.loads(res.stdout)["run-id"])
        except (ValueError, KeyError, TypeError):
            raise RuntimeError(f"flwr run failed:\n{res.stdout}{res.stderr}") from None

    def status(self, run_id: int) -> RunStatus:
        res = self.flwr("list", "--run-id", str(run_id), CONNECTION, "--format", "json")
        try:
            run = json.loads(res.stdout)["runs"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            raise RuntimeError(f"flwr list --run-id {run_id} failed:\n{res.stdout}{res.stderr}") from None
        return RunStatus(run_id, str(run.get("status", "")), str(run.get("details", "")))

    def wait(self, run_id: int, timeout: float, poll: float = 3.0) -> RunStatus:
        """Until the run finishes; the SuperLink dying, or ``timeout`` seconds, are errors."""
        deadline = time.monotonic() + timeout
        while True:
            if self.procs["superlink"].poll() is not None:
                raise RuntimeError(f"the SuperLink exited during run {run_id}:\n{self.log_tail('superlink')}")
            status = self.status(run_id)
            if status.status.startswith("finished"):
                return status
            if time.monotonic() > deadline:
                self.flwr("stop", str(run_id), CONNECTION)
                raise TimeoutError(f"run {run_id} did not finish within {timeout:g} s (status {status.status})")
            time.sleep(poll)

    def start_run(self, cfg: RunConfig, out: str | Path, resume: bool = False) -> int:
        """The SuperLink, one SuperNode per site of ``cfg`` (:func:`site_node_configs`) and ``flwr run`` of its app
        project into the run directory ``out``; returns the run id."""
        self.start_superlink()
        for site, config in site_node_configs(cfg, out).items():
            self.start_supernode(site, config)
        app_dir = self.workdir / "app"
        write_project(app_dir, cfg, out, resume)
        return self.submit(app_dir)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal a process, its group and everything it started (a site's machine going down)."""
        proc = self.procs[name]
        pids = _descendants(proc.pid)
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        _signal(pids, sig)
        if sig == signal.SIGKILL:
            proc.wait()

    def stop(self, grace: float = 5.0) -> None:
        """End every process started here (TERM, then KILL after ``grace`` seconds)."""
        trees = {name: [p.pid, *_descendants(p.pid)] for name, p in self.procs.items()}
        for name, proc in self.procs.items():
            if proc.poll() is None:
                self.kill(name, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for name, proc in self.procs.items():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _signal(trees[name], signal.SIGKILL)
            proc.wait()


def site_node_configs(cfg: RunConfig, out: str | Path) -> dict[str, dict[str, str]]:
    """Each site's node config on this machine: its data directory (the phantom's are generated once, into the
    cache, as a hospital's would be), modality, and state directory (under ``out/flower/sites/``)."""
    return {s.name: {"data-dir": s.data_dir or str(phantom_dir(cfg.data, s.modality, s.cases, s.seed)),
                     "modality": s.modality, "state-dir": str(Path(out).absolute() / "flower" / "sites" / s.name)}
            for s in cfg.data.sites}


def run_local(cfg: RunConfig, out: str | Path, *, resume: bool = False, timeout: float = 24 * 3600.0,
              progress: bool = True) -> RunStatus | None:
    """Run ``cfg`` through a local SuperLink and one SuperNode per site into the run directory ``out``;
    ``resume`` continues the interrupted run there (None when it had finished).

    TLS and SuperNode authentication are on unless ``flower.insecure``. Flower's logs go to ``out/flower/``.
    Raises a ``RuntimeError`` with the ServerApp's message when the run fails.
    """
    rd = RunDir(out)
    if rd.check_start(dump(cfg), resume):
        return None
    with tempfile.TemporaryDirectory(prefix="fedgin-flower-") as tmp:
        with LocalFederation(tmp, secure=not cfg.flower.insecure) as fed:
            try:
                run_id = fed.start_run(cfg, rd.path, resume)
                if progress:
                    print(f"Flower run {run_id}: SuperLink {fed.address}, {len(cfg.data.sites)} SuperNodes; "
                          f"logs in {rd.path / 'flower'}", flush=True)
                try:
                    status = fed.wait(run_id, timeout)
                finally:
                    (fed.logs / "serverapp.log").write_text(fed.flwr("log", str(run_id), CONNECTION, "--show").stdout)
            finally:
                fed.stop()
                shutil.copytree(fed.logs, rd.path / "flower", dirs_exist_ok=True)
    if not status.ok:
        raise RuntimeError(f"Flower run {run_id} {status.status}: {status.details or 'see ' + str(rd.path / 'flower')}")
    return status
