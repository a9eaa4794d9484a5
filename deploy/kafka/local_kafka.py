#!/usr/bin/env python3
"""A real single-node Apache Kafka broker (KRaft) on loopback, from Kafka's own jars.

No Docker engine is needed: the jars come from Maven Central through Maven
(``pom.xml`` beside this file), are cached, and the broker runs as a plain
``java`` process with its storage in a temporary directory.

Standard library only, so it can run before the project is installed::

    python deploy/kafka/local_kafka.py fetch            # download the jars once
    python deploy/kafka/local_kafka.py run --port 9092  # foreground broker, Ctrl-C stops it
    python deploy/kafka/local_kafka.py run --nodes 3    # a three-node KRaft cluster (replication 3, min ISR 2)
    python deploy/kafka/local_kafka.py start --port 9092 --dir /tmp/kafka  # background
    python deploy/kafka/local_kafka.py stop --dir /tmp/kafka

From Python (the test fixture and ``audiostream demo`` do this)::

    with LocalKafka() as broker:
        print(broker.bootstrap_servers)
"""
from __future__ import annotations

import argparse
import base64
import os
import shutil
import signal
import socket
import queue
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
LOG4J = HERE / "log4j2.properties"


def kafka_version() -> str:
    text = POM.read_text()
    start = text.index("<kafka.version>") + len("<kafka.version>")
    return text[start:text.index("</kafka.version>")]


def cache_dir() -> Path:
    root = os.environ.get("AUDIOSTREAM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "audiostream")
    return Path(root) / f"kafka-{kafka_version()}"


def libs_dir() -> Path:
    return cache_dir() / "libs"


def fetch(quiet: bool = False) -> Path:
    """Download Kafka's broker jars with Maven into the cache (once)."""
    libs = libs_dir()
    marker = libs / f"kafka-tools-{kafka_version()}.jar"  # the last artifact added to pom.xml: older caches refetch
    if marker.exists() and (libs / f"kafka_2.13-{kafka_version()}.jar").exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError("Maven ('mvn') is not on PATH; install it (Debian: apt-get install maven)")
    tmp = libs.with_name("libs.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if not quiet:
        print(f"fetching Apache Kafka {kafka_version()} jars with Maven into {libs} ...", file=sys.stderr)
    cmd = [mvn, "-B", "-q", "-f", str(POM), "dependency:copy-dependencies",
           f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not (tmp / marker.name).exists():
        raise RuntimeError(f"Maven could not fetch the Kafka jars (exit {proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    return libs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# G1 with Kafka's own pause target (kafka-run-class.sh sets MaxGCPauseMillis=20) and regions of 8 MiB. At a
# 512 MiB heap G1 picks 1 MiB regions, so every buffer over 512 KiB is a humongous allocation, and each one can
# start a young collection: under `bench --kafka --streams 1000` (a load generator producing a 1000-frame tick
# every 100 ms, in requests of up to 1 MB) the broker paused 118-325 times, for 0.6-1.4 s, in 30 s of load;
# with these options ~30 times, for 0.15-0.2 s (docs/performance.md, sitting 10).
G1_OPTIONS = ("-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:G1HeapRegionSize=8m")


def java_bin() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and Path(home, "bin", "java").exists():
        return str(Path(home, "bin", "java"))
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("no 'java' on PATH: Kafka 4 needs Java 17+ (Debian: openjdk-17-jre-headless)")
    return java


class LocalKafka:
    """One KRaft broker+controller process on 127.0.0.1.

    ``extra_properties`` are appended to server.properties (e.g. a SASL listener).
    """

    def __init__(self, port: int = 0, workdir: str | os.PathLike | None = None,
                 extra_properties: dict[str, str] | None = None, heap: str = "512m", die_with_parent: bool = True,
                 scram_users: dict[str, str] | None = None, host: str = "127.0.0.1", advertise: str | None = None,
                 node_id: int = 1, cluster_id: str | None = None):
        self.port = port or free_port()
        self.node_id = node_id
        self.cluster_id = cluster_id  # None: a fresh one when the storage is formatted (a single node)
        self.voters: str | None = None  # a cluster's controller.quorum.voters (LocalCluster sets it)
        # (listen port, advertised port) of a second PLAINTEXT listener, VIA, for clients that reach the
        # cluster through a proxy forwarding the advertised port to the listen port (LocalCluster(proxied=True))
        self.via: tuple[int, int] | None = None
        # PLAINTEXT clients: bind address and the host name given to clients (a container binds 0.0.0.0
        # and advertises its service name); the controller stays on loopback
        self.host = host
        self.advertise = advertise or ("127.0.0.1" if host in ("0.0.0.0", "", "::") else host)
        # SCRAM-SHA-256 users get a SASL_PLAINTEXT listener on ``sasl_port`` (credentials are written into the
        # KRaft metadata when the storage is formatted); PLAINTEXT stays for the broker's own traffic
        self.scram_users = dict(scram_users or {})
        self.sasl_port = free_port() if self.scram_users else None
        self.controller_port = free_port()
        self._own_dir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="audiostream-kafka-"))
        self.extra_properties = dict(extra_properties or {})
        self.heap = heap
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_bootstrap_servers(self) -> str | None:
        return f"127.0.0.1:{self.sasl_port}" if self.sasl_port else None

    @property
    def log_path(self) -> Path:
        return self.workdir / "broker.log"

    def _classpath(self) -> str:
        return str(fetch(quiet=True)) + os.sep + "*"

    def _write_config(self) -> Path:
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters or f"{self.node_id}@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.advertise}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.workdir / "data"),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.flush.interval.messages": "9223372036854775807",
        }
        if self.via:
            listen, advertised = self.via
            props.update({
                "listeners": props["listeners"] + f",VIA://127.0.0.1:{listen}",
                "advertised.listeners": props["advertised.listeners"] + f",VIA://127.0.0.1:{advertised}",
                "listener.security.protocol.map": props["listener.security.protocol.map"] + ",VIA:PLAINTEXT",
            })
        if self.scram_users:
            props.update({
                "listeners": props["listeners"] + f",SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}",
                "advertised.listeners": props["advertised.listeners"] + f",SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}",
                "listener.security.protocol.map": props["listener.security.protocol.map"]
                + ",SASL_PLAINTEXT:SASL_PLAINTEXT",
                "sasl.enabled.mechanisms": "SCRAM-SHA-256",
                "listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config":
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            })
        props.update(self.extra_properties)
        path = self.workdir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path

    def start(self, timeout: float = 90.0) -> "LocalKafka":
        """Start the broker and wait until it serves clients."""
        return self.launch().wait_ready(timeout)

    def launch(self) -> "LocalKafka":
        """Start the process without waiting (a cluster's nodes must all be running to elect a quorum)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        java, cp = java_bin(), self._classpath()
        base = [java, f"-Xmx{self.heap}", "-Xms128m", *G1_OPTIONS, "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={LOG4J}", "-cp", cp]
        if not (self.workdir / "data" / "meta.properties").exists():
            cluster_id = self.cluster_id or new_cluster_id()
            # '=' form: a base64 id may start with '-', which would otherwise parse as an option
            scram = [f"--add-scram=SCRAM-SHA-256=[name={u},password={pw}]" for u, pw in self.scram_users.items()]
            fmt = subprocess.run(base + ["kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                                         f"--config={config}", *scram], capture_output=True, text=True)
            if fmt.returncode != 0:
                raise RuntimeError(f"formatting KRaft storage failed:\n{fmt.stdout}\n{fmt.stderr}")
        log = open(self.log_path, "ab")
        self._log_start = self.log_path.stat().st_size  # a restart appends: look only at this run's lines
        self.proc = _spawn(base + ["kafka.Kafka", str(config)], stdout=log, stderr=subprocess.STDOUT,
                           start_new_session=True,
                           preexec_fn=_die_with_parent if self.die_with_parent else _unblock_signals)
        log.close()  # the child holds its own copy
        (self.workdir / "broker.pid").write_text(str(self.proc.pid))
        return self

    def wait_ready(self, timeout: float = 90.0) -> "LocalKafka":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Kafka exited with code {self.proc.returncode}; log:\n{self._log_tail()}")
            if b"Kafka Server started" in self.log_path.read_bytes()[self._log_start:] and _port_open(self.port):
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Kafka did not start within {timeout:.0f}s; log:\n{self._log_tail()}")

    def _log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30.0, remove: bool | None = None) -> None:
        """SIGTERM (controlled shutdown), SIGKILL if it does not exit in time."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if remove if remove is not None else self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the broker, keeping its data (for outage tests: start() again later)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> "LocalKafka":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def new_cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


class LocalCluster:
    """``nodes`` KRaft nodes (each broker+controller) on loopback: one quorum, replication factor ``nodes``
    and ``min.insync.replicas`` ``nodes - 1`` for every topic by default, as production runs Kafka.

    ``kill(i)`` (SIGKILL, data kept) and ``restart(i)`` bounce one node, ``pause(i)``/``resume(i)`` hold one
    down (SIGSTOP/SIGCONT); ``leader(topic, partition)`` and
    ``controller()`` say which node to hit.

    ``proxied``: every node also listens on a VIA listener advertised at another free port; a proxy
    forwarding each ``proxy_routes()`` pair lets a client bootstrapped on ``proxied_bootstrap_servers``
    reach every broker only through it (its metadata names the advertised ports of the listener it asked),
    so a test can cut that one client's network (tests/integration/netpause.py).
    """

    def __init__(self, nodes: int = 3, workdir: str | os.PathLike | None = None, heap: str = "384m",
                 extra_properties: dict[str, str] | None = None, proxied: bool = False):
        if nodes < 1:
            raise ValueError(f"nodes={nodes} must be at least 1")
        self._own_dir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="audiostream-kafka-cluster-"))
        rf, isr = str(nodes), str(max(1, nodes - 1))
        props = {"default.replication.factor": rf, "min.insync.replicas": isr,
                 "offsets.topic.replication.factor": rf, "transaction.state.log.replication.factor": rf,
                 "transaction.state.log.min.isr": isr, "share.coordinator.state.topic.replication.factor": rf,
                 "share.coordinator.state.topic.min.isr": isr, **(extra_properties or {})}
        cid = new_cluster_id()
        self.nodes = [LocalKafka(workdir=self.workdir / f"node-{i}", heap=heap, node_id=i, cluster_id=cid,
                                 extra_properties=props) for i in range(1, nodes + 1)]
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        for n in self.nodes:
            n.voters = voters
            if proxied:
                n.via = (free_port(), free_port())

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(n.bootstrap_servers for n in self.nodes)

    @property
    def proxied_bootstrap_servers(self) -> str | None:
        """The VIA listeners' advertised addresses (where the proxies listen), None unless ``proxied``."""
        return ",".join(f"127.0.0.1:{n.via[1]}" for n in self.nodes) if self.nodes[0].via else None

    def proxy_routes(self) -> list[tuple[int, int]]:
        """(port a proxy listens on, broker port it forwards to) for each node's VIA listener."""
        return [(n.via[1], n.via[0]) for n in self.nodes if n.via]

    def node(self, node_id: int) -> LocalKafka:
        return self.nodes[node_id - 1]

    def start(self, timeout: float = 120.0) -> "LocalCluster":
        for n in self.nodes:
            n.launch()
        try:
            for n in self.nodes:
                n.wait_ready(timeout)
        except RuntimeError:
            self.stop()
            raise
        return self

    def kill(self, node_id: int) -> None:
        self.node(node_id).kill()

    def restart(self, node_id: int, timeout: float = 120.0) -> None:
        """Start a killed or stopped node again on its data and ports."""
        self.node(node_id).start(timeout)

    def pause(self, node_id: int) -> None:
        """SIGSTOP one node: held down without a restart (the process-stop fault of Kafka's Trogdor), its
        connections open and silent, until ``resume``; shorter than ``broker.session.timeout.ms`` it stays
        registered and keeps its leaderships, so clients wait on it."""
        self.node(node_id).proc.send_signal(signal.SIGSTOP)

    def resume(self, node_id: int) -> None:
        self.node(node_id).proc.send_signal(signal.SIGCONT)

    def stop_node(self, node_id: int, timeout: float = 30.0) -> None:
        """Controlled shutdown of one node (SIGTERM), data kept: a rolling restart's first half."""
        self.node(node_id).stop(timeout, remove=False)

    def leader(self, topic: str, partition: int = 0, timeout: float = 10.0) -> int:
        """The node id leading ``topic[partition]`` now; -1 while the broker asked does not know the partition
        yet (a new topic reaches each broker's metadata on its own time)."""
        from confluent_kafka.admin import AdminClient
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
        md = admin.list_topics(topic, timeout=timeout)
        found = md.topics.get(topic)
        if found is None or found.error is not None or partition not in found.partitions:
            return -1
        return found.partitions[partition].leader

    def controller(self, timeout: float = 60.0) -> int:
        """The node id of the active KRaft controller (the quorum leader), from Kafka's own
        MetadataQuorumCommand: a client's DescribeCluster names a random broker under KRaft."""
        live = [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]
        cmd = [java_bin(), "-Xmx128m", f"-Dlog4j2.configurationFile={LOG4J}", "-cp", self.nodes[0]._classpath(),
               "org.apache.kafka.tools.MetadataQuorumCommand", "--bootstrap-server",
               ",".join(n.bootstrap_servers for n in live), "describe", "--status"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        for line in out.stdout.splitlines():
            if line.strip().startswith("LeaderId:"):
                return int(line.split(":", 1)[1])
        raise RuntimeError(f"no LeaderId in the quorum's status (exit {out.returncode}): {out.stderr[-1000:]}")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to every node at once (one by one, the last ones lose their quorum and wait out the
        timeout), then SIGKILL what is still running after ``timeout``."""
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is None:
                n.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for n in self.nodes:
            if n.proc is not None:
                try:
                    n.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            n.stop(timeout=1, remove=False)  # kills what did not exit
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


try:  # resolved here, in the parent: the forked child must not import or load anything
    import ctypes
    _PRCTL = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except (OSError, AttributeError):
    _PRCTL = None
PR_SET_PDEATHSIG = 1


def _unblock_signals() -> None:
    """In the child before exec: a signal mask is inherited, and ``run`` blocks SIGTERM/SIGINT in its own
    process to wait for them; the broker must still stop on them."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started us dies (Linux), so a test run
    or bench killed without cleanup does not leave a broker behind. The kernel sends it when the *thread*
    that forked exits, not the process: hence ``_spawn``."""
    _unblock_signals()
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGTERM))


_spawner: "queue.Queue | None" = None
_spawner_lock = threading.Lock()


def _spawn(cmd: list[str], **popen) -> subprocess.Popen:
    """``subprocess.Popen`` run in one daemon thread that lives as long as this process. PR_SET_PDEATHSIG
    fires when the forking thread exits: a broker (re)started from a short-lived thread (the chaos soak's
    bounce thread) was SIGTERMed the moment that thread ended, a clean shutdown with nothing in its log
    but a WARN. Forked here, a broker dies with the process, never with a helper thread."""
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = queue.Queue()

            def serve(q: queue.Queue) -> None:
                while True:
                    args, kwargs, box, done = q.get()
                    try:
                        box.append(subprocess.Popen(args, **kwargs))
                    except BaseException as exc:  # handed back to the caller
                        box.append(exc)
                    done.set()
            threading.Thread(target=serve, args=(_spawner,), name="local-kafka-spawner", daemon=True).start()
    box: list = []
    done = threading.Event()
    _spawner.put((cmd, popen, box, done))
    done.wait()
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch", help="download the Kafka jars with Maven (cached)")
    for name in ("run", "start"):
        p = sub.add_parser(name, help="foreground broker" if name == "run" else "background broker")
        p.add_argument("--port", type=int, default=9092)
        p.add_argument("--dir", default=None, help="storage/work directory (kept)")
        p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
        p.add_argument("--advertise", default=None, help="host name clients are told to connect to")
        p.add_argument("--heap", default="512m", help="Java heap (-Xmx)")
        if name == "run":
            p.add_argument("--nodes", type=int, default=1,
                           help="a KRaft cluster of this many nodes on free loopback ports (replication factor N, "
                                "min.insync.replicas N-1)")
    p = sub.add_parser("stop", help="stop a broker started with 'start'")
    p.add_argument("--dir", required=True)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "fetch":
            print(fetch())
        elif args.cmd == "stop":
            pid_file = Path(args.dir) / "broker.pid"
            if not pid_file.exists():
                print(f"no broker.pid in {args.dir}", file=sys.stderr)
                return 1
            pid = int(pid_file.read_text())
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            for _ in range(300):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            pid_file.unlink()
        elif args.cmd == "run" and args.nodes > 1:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            cluster = LocalCluster(args.nodes, workdir=args.dir or None, heap=args.heap).start()
            print(f"Kafka {kafka_version()} cluster of {args.nodes} ready on {cluster.bootstrap_servers}", flush=True)
            try:
                signal.sigwait({signal.SIGINT, signal.SIGTERM})
            finally:
                cluster.stop()
        else:
            broker = LocalKafka(port=args.port, workdir=args.dir or None, die_with_parent=args.cmd == "run",
                                host=args.host, advertise=args.advertise, heap=args.heap)
            if args.cmd == "run":  # held from the start: a SIGTERM during start-up stops it too (as PID 1 in a
                # container a signal without a handler would be ignored)
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            broker.start()
            print(f"Kafka {kafka_version()} ready on {broker.host}:{broker.port}, advertised as "
                  f"{broker.advertise}:{broker.port} (dir {broker.workdir})", flush=True)
            if args.cmd == "run":
                try:
                    signal.sigwait({signal.SIGINT, signal.SIGTERM})
                finally:
                    broker.stop()
            else:
                broker.proc = None  # leave it running; 'stop --dir' ends it
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
