"""A machine other than node 0 (``--node-rank > 0``): it runs its tensor-parallel ranks only.

With ``--nnodes N`` the ``--tp-size`` ranks are spread evenly over the machines: node r runs
ranks r*k .. r*k+k-1 (k = tp_size / nnodes, ``ServerArgs.node_tp_ranks``). Node 0 runs rank 0
(the scheduler, the engine process) and the HTTP server; every other node runs followers
(``tp_worker.run_tp_follower``), which meet rank 0 at ``--dist-init-addr`` (a ``tcp://``
torch.distributed rendezvous) and then run each step rank 0 broadcasts.

``WorkerNode`` starts those ranks, answers ``/health`` on ``--host:--port`` (200 while they all
run, for the probes of a cluster manager) and waits. It returns 0 once node 0 told its ranks to
stop, and 1 when a rank failed: node 0 or another rank died, or the ranks never met within
``SGLANG_TP_TIMEOUT``. With ``--engine-restart`` it starts the ranks again instead, so that they
rejoin node 0's restarted engine (node 0 waits for them at the same address).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sglang.srt.server_args import ServerArgs, dist_init_url

logger = logging.getLogger("sglang.worker_node")
POLL_S = 0.5
RESTART_DELAY_S = 1.0
HEALTH_PATHS = ("/health", "/health_generate", "/ready")


class WorkerNode:
    def __init__(self, args: ServerArgs) -> None:
        if args.node_rank == 0:
            raise ValueError("node 0 runs the HTTP server (launch_server), not a WorkerNode")
        self.args = args
        self.ranks = list(args.node_tp_ranks())
        self.init_method = dist_init_url(args.dist_init_addr or "")
        self.procs: list[mp.Process] = []
        self.stopping = threading.Event()
        self.starts = 0  # times the ranks were started (restarts + 1)

    # ---- the ranks -------------------------------------------------------------------------------
    def start_ranks(self) -> None:
        from sglang.srt.managers.tp_worker import run_tp_follower

        ctx = mp.get_context("spawn")
        self.procs = [ctx.Process(target=run_tp_follower, args=(self.args, rank, self.init_method),
                                  daemon=True) for rank in self.ranks]
        for proc in self.procs:
            proc.start()
        self.starts += 1
        logger.info("node %d of %d: TP ranks %s started; they meet rank 0 at %s",
                    self.args.node_rank, self.args.nnodes, self.ranks, self.init_method)

    def healthy(self) -> bool:
        return bool(self.procs) and all(p.is_alive() for p in self.procs)

    def stop_ranks(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)

    def wait_ranks(self) -> int:
        """Waits until every rank ended (0: all stopped by node 0) or one failed (1; the others
        are stopped), or ``stop`` was called (0)."""
        while not self.stopping.is_set():
            codes = [p.exitcode for p in self.procs]
            if any(code not in (None, 0) for code in codes):
                failed = next(r for r, c in zip(self.ranks, codes) if c not in (None, 0))
                logger.error("TP rank %d exited with code %s", failed,
                             codes[self.ranks.index(failed)])
                self.stop_ranks()
                return 1
            if all(code == 0 for code in codes):
                return 0
            self.stopping.wait(POLL_S)
        self.stop_ranks()
        return 0

    # ---- the node --------------------------------------------------------------------------------
    def run(self) -> int:
        """Runs the node's ranks (again after a failure with --engine-restart) until they end
        or the process is told to stop; the exit code."""
        server = self._serve_health()
        try:
            while True:
                self.start_ranks()
                code = self.wait_ranks()
                if self.stopping.is_set() or code == 0:
                    logger.info("node %d: the TP ranks stopped", self.args.node_rank)
                    return 0
                if not self.args.engine_restart:
                    logger.error("node %d: a TP rank failed (node 0 or a rank died); exiting "
                                 "(use --engine-restart to rejoin node 0 instead)",
                                 self.args.node_rank)
                    return 1
                logger.warning("node %d: a TP rank failed; starting the ranks again to rejoin "
                               "node 0 (--engine-restart)", self.args.node_rank)
                if self.stopping.wait(RESTART_DELAY_S):
                    return 0
        finally:
            if server is not None:
                server.shutdown()
                server.server_close()

    def stop(self) -> None:
        self.stopping.set()

    def _serve_health(self) -> ThreadingHTTPServer | None:
        """``/health`` (and ``/health_generate``, ``/ready``) on --host:--port: 200 while every
        rank of this node runs, else 503. Other paths: 404 (this node serves no API)."""
        node = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in HEALTH_PATHS:
                    self._reply(404, b'{"error": "node %d serves no API; send requests to '
                                     b'node 0"}' % node.args.node_rank)
                else:
                    self._reply(200 if node.healthy() else 503, b"")

            def do_POST(self) -> None:
                self._reply(404, b'{"error": "node %d serves no API; send requests to node 0"}'
                            % node.args.node_rank)

            def _reply(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        try:
            server = ThreadingHTTPServer((self.args.host, self.args.port), Handler)
        except OSError as exc:  # the ranks matter more than the probe: run without it
            logger.warning("node %d: no health endpoint on %s:%d (%s)", self.args.node_rank,
                           self.args.host, self.args.port, exc)
            return None
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


def run_worker_node(args: ServerArgs) -> int:
    """``launch_server`` on a node with ``--node-rank > 0``: its ranks until they end."""
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format=f"[%(asctime)s node{args.node_rank}] %(message)s")
    node = WorkerNode(args)

    def on_signal(signum: int, frame: Any) -> None:
        node.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    start = time.monotonic()
    code = node.run()
    logger.info("node %d exits (%d) after %.0f s", args.node_rank, code, time.monotonic() - start)
    return code
