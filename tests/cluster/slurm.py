"""A one-node SLURM cluster on loopback for the cluster tests: munged, slurmctld and slurmd.

    with SlurmCluster() as cluster:       # raises ClusterUnavailable with the reason
        subprocess.run(["sbatch", "--wrap", "hostname"], env=cluster.env)

Everything lives in a fresh folder under /tmp (state, spool, logs, the munge socket), except
the config itself: the SLURM executor plugin strips SLURM_CONF from the environment of the
`srun` inside each job, so the config is placed where SLURM looks by default
(/etc/slurm/slurm.conf) and removed again when the cluster stops. A lock file keeps two test
sessions on one machine from running clusters at the same time.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, Any

DEFAULT_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# usher_pipeline test cluster"
NODE = "usher01"
PARTITION = "debug"
SESSION_LOCK = Path(tempfile.gettempdir()) / "usher_pipeline-slurm-test.lock"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("munge", "unmunge", "sinfo", "squeue", "sbatch", "srun", "scancel", "scontrol")


class ClusterUnavailable(RuntimeError):
    """SLURM could not be started here; the message says why and includes the daemon logs."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"  ({path} was not written)"
    return "\n".join(f"  {line}" for line in text[-lines:]) or f"  ({path} is empty)"


class SlurmCluster:
    """Start munged, slurmctld and `slurmd -N usher01` in a temporary folder; stop them on exit."""

    def __init__(self, cpus: int = 8, memory_mb: int = 32000, start_timeout: float = 60.0) -> None:
        # The node may declare more CPUs and memory than the machine has (the test jobs
        # mostly wait), so that a workflow's parallel jobs and memory requests fit.
        self.cpus = max(cpus, os.cpu_count() or 1)
        self.memory_mb = memory_mb
        self.start_timeout = start_timeout
        self.base: Path | None = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock: IO[str] | None = None
        self._previous_conf: bytes | None = None
        self._conf_written = False

    # -- paths -----------------------------------------------------------------------------

    def path(self, *parts: str) -> Path:
        if self.base is None:
            raise RuntimeError("the cluster is not started")
        return self.base.joinpath(*parts)

    @property
    def munge_socket(self) -> Path:
        return self.path("munge", "munge.socket")

    @property
    def env(self) -> dict[str, str]:
        """The environment for SLURM client commands (the config is at the default place)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
        env["SLURM_CONF"] = str(DEFAULT_CONF)
        return env

    # -- start -----------------------------------------------------------------------------

    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the daemons and wait until the node is idle; raise ClusterUnavailable if not."""
        self._check_prerequisites()
        self._take_session_lock()
        try:
            self.base = Path(tempfile.mkdtemp(prefix="usher-slurm-", dir="/tmp"))
            self.base.chmod(0o755)
            self._start_munge()
            self._write_config()
            for name in ("state", "spool", "log"):
                self.path(name).mkdir()
            self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(DEFAULT_CONF)])
            self._wait_for(
                lambda: self._run(["scontrol", "ping"]).returncode == 0,
                "slurmctld to answer `scontrol ping`",
            )
            self._spawn("slurmd", ["slurmd", "-D", "-N", NODE, "-f", str(DEFAULT_CONF)])
            self._wait_for(self._node_ready, f"node {NODE} to become idle in `sinfo`")
        except BaseException:
            self.stop()
            raise

    def _check_prerequisites(self) -> None:
        missing = [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name) is None]
        if missing:
            raise ClusterUnavailable(
                f"SLURM cannot be started: {', '.join(missing)} not found on PATH; install the "
                "Debian packages with `apt-get install slurm-wlm munge` (as .ci/run does)"
            )
        if os.geteuid() != 0:
            raise ClusterUnavailable(
                "SLURM cannot be started: slurmd and munged need root (this is uid "
                f"{os.geteuid()}); run the cluster tests as root, as .ci/run does in CI"
            )
        if DEFAULT_CONF.exists() and MARKER not in DEFAULT_CONF.read_text(errors="replace"):
            raise ClusterUnavailable(
                f"SLURM cannot be started: {DEFAULT_CONF} belongs to a real SLURM installation "
                "and the test cluster will not replace it; run the cluster tests on a machine "
                "without one (a CI container)"
            )

    def _take_session_lock(self, timeout: float = 900.0) -> None:
        handle = open(SESSION_LOCK, "a+")  # noqa: SIM115 - held until stop()
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    handle.close()
                    raise ClusterUnavailable(
                        f"SLURM cannot be started: another test session holds {SESSION_LOCK} "
                        f"for more than {timeout:.0f} s; wait for it to finish"
                    ) from None
                time.sleep(1.0)
        self._lock = handle

    def _start_munge(self) -> None:
        folder = self.path("munge")
        folder.mkdir(mode=0o755)
        shutil.chown(folder, "munge", "munge")
        self._spawn(
            "munged",
            [
                "munged",
                "--foreground",
                f"--socket={self.munge_socket}",
                f"--pid-file={folder / 'munged.pid'}",
                f"--log-file={folder / 'munged.log'}",
                f"--seed-file={folder / 'munged.seed'}",
            ],
            user="munge",
            log=folder / "munged.out",
        )
        self._wait_for(self._munge_works, "munged to encode and decode a credential")

    def _munge_works(self) -> bool:
        encoded = self._run(["munge", "-n", f"--socket={self.munge_socket}"])
        if encoded.returncode != 0:
            return False
        decoded = subprocess.run(
            ["unmunge", f"--socket={self.munge_socket}"],
            input=encoded.stdout,
            capture_output=True,
            check=False,
        )
        return decoded.returncode == 0

    def _write_config(self) -> None:
        physical_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        memory_mb = max(self.memory_mb, physical_mb)
        conf = f"""{MARKER} in {self.base}; removed when the test cluster stops
ClusterName=usher
SlurmctldHost={socket.gethostname()}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={self.path("state")}
SlurmdSpoolDir={self.path("spool")}
SlurmctldPidFile={self.path("slurmctld.pid")}
SlurmdPidFile={self.path("slurmd.pid")}
SlurmctldLogFile={self.path("log", "slurmctld.log")}
SlurmdLogFile={self.path("log", "slurmd.log")}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=300
SlurmdParameters=config_overrides
KillWait=5
SchedulerType=sched/builtin
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
NodeName={NODE} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""
        if DEFAULT_CONF.exists():
            self._previous_conf = DEFAULT_CONF.read_bytes()
        DEFAULT_CONF.parent.mkdir(parents=True, exist_ok=True)
        DEFAULT_CONF.write_text(conf)
        self._conf_written = True
        (self.path("slurm.conf")).write_text(conf)

    def _node_ready(self) -> bool:
        result = self._run(["sinfo", "-h", "-N", "-o", "%N %T"])
        return result.returncode == 0 and f"{NODE} idle" in result.stdout.decode()

    def _spawn(
        self, name: str, command: list[str], user: str | None = None, log: Path | None = None
    ) -> None:
        out = open(log or self.path(f"{name}.out"), "wb")  # noqa: SIM115 - closed by the child
        try:
            self.procs[name] = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                user=user,
                group=user,
                extra_groups=[] if user else None,
                start_new_session=True,
            )
        finally:
            out.close()

    def _wait_for(self, ready: Any, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
            if dead:
                raise ClusterUnavailable(
                    f"SLURM cannot be started: {', '.join(dead)} exited "
                    f"({dead}) while waiting for {what}\n{self.diagnostics()}"
                )
            if ready():
                return
            time.sleep(0.5)
        raise ClusterUnavailable(
            f"SLURM cannot be started: timed out after {self.start_timeout:.0f} s waiting for "
            f"{what}\n{self.diagnostics()}"
        )

    def _run(self, command: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(
                command, capture_output=True, env=self.env, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(command, 124, exc.stdout or b"", b"timeout")

    def diagnostics(self) -> str:
        """The tails of every daemon log, for failure messages."""
        if self.base is None:
            return ""
        logs = [
            self.path("munge", "munged.log"),
            self.path("munge", "munged.out"),
            self.path("slurmctld.out"),
            self.path("log", "slurmctld.log"),
            self.path("slurmd.out"),
            self.path("log", "slurmd.log"),
        ]
        return "\n".join(f"--- {log}\n{_tail(log)}" for log in logs if log.exists())

    # -- use -------------------------------------------------------------------------------

    def squeue(self) -> list[dict[str, str]]:
        """Every job the controller knows (running and finished in the last MinJobAge seconds).

        Each job: job_id, state, comment, name, workdir, submit, start and end (ISO times).
        """
        result = self._run(["squeue", "-h", "--states=all", "-o", "%i|%T|%k|%V|%S|%e|%j|%Z"])
        if result.returncode != 0:
            raise ClusterUnavailable(
                f"squeue failed: {result.stderr.decode().strip()}\n{self.diagnostics()}"
            )
        jobs = []
        for line in result.stdout.decode().splitlines():
            keys = ("job_id", "state", "comment", "submit", "start", "end", "name", "workdir")
            fields = (line.split("|", len(keys) - 1) + [""] * len(keys))[: len(keys)]
            jobs.append(dict(zip(keys, fields, strict=True)))
        return jobs

    def scancel(self, job_id: str) -> None:
        """Cancel one job, as a user (or a node failure) would."""
        result = self._run(["scancel", job_id])
        if result.returncode != 0:
            raise RuntimeError(f"scancel {job_id} failed: {result.stderr.decode().strip()}")

    # -- stop ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Cancel leftover jobs, stop the daemons this object started, remove the config."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self._run(["scancel", f"--partition={PARTITION}"])
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                states = [j["state"] for j in self.squeue()] if self._responsive() else []
                if not any(s in {"RUNNING", "PENDING", "COMPLETING"} for s in states):
                    break
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._conf_written:
            if self._previous_conf is not None:
                DEFAULT_CONF.write_bytes(self._previous_conf)
            else:
                DEFAULT_CONF.unlink(missing_ok=True)
            self._conf_written = False
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _responsive(self) -> bool:
        return self._run(["scontrol", "ping"], timeout=5).returncode == 0
