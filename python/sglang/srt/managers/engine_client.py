"""The HTTP process's connection to the engine process: its lifecycle and its message I/O.

``EngineClient`` spawns the engine process (``engine_process.run_engine_process``, ``spawn``),
waits for its ``EngineReady``, and talks to it over two ZMQ sockets (requests out, token batches and replies in).
A receive task hands every ``BatchTokenOut`` / ``RequestError`` to the ``EngineListener`` (the
tokenizer manager) and routes replies to the coroutine awaiting them (``request``); a watchdog
task notices when the process dies and tells the listener once. It knows nothing of requests,
text or responses. Runs on one asyncio loop; ``start``/``shutdown`` may be called off it. With
``--dp-size > 1`` an ``EngineGroup`` (``engine_group.py``) holds one client per replica. With
``--tp-size N`` it also starts the N - 1 follower ranks (``tp_worker.run_tp_follower``) next to
the engine process (TP rank 0), joined through a ``file://`` rendezvous in its IPC folder; a
follower that dies counts as the engine dying.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from typing import Any, Protocol

import zmq
import zmq.asyncio

from sglang.srt.managers.io_struct import AbortReq, BatchTokenOut, EngineReady, RequestError
from sglang.srt.server_args import ServerArgs

logger = logging.getLogger("sglang.engine_client")
ENGINE_START_TIMEOUT_S = float(os.environ.get("SGLANG_ENGINE_START_TIMEOUT", "1800"))
WATCHDOG_PERIOD_S = 0.5


class EngineDeadError(RuntimeError):
    pass


class EngineListener(Protocol):
    def on_batch(self, batch: BatchTokenOut) -> Any: ...
    def on_request_error(self, error: RequestError) -> None: ...
    def on_engine_death(self) -> None: ...


class EngineClient:
    def __init__(self, server_args: ServerArgs, listener: EngineListener,
                 dp_rank: int | None = None) -> None:
        self.args = server_args
        self.listener = listener
        self.dp_rank = dp_rank  # this replica's index (None: the only engine)
        self.ipc_dir = tempfile.mkdtemp(prefix="sglang-ipc-")
        self.ctx = zmq.asyncio.Context()
        self.send_sock = self.ctx.socket(zmq.PUSH)
        self.send_sock.bind(f"ipc://{self.ipc_dir}/to_engine")
        self.recv_sock = self.ctx.socket(zmq.PULL)
        self.recv_sock.bind(f"ipc://{self.ipc_dir}/from_engine")
        self.proc: mp.Process | None = None
        self.followers: list[mp.Process] = []  # TP ranks 1..N-1
        self._ready_reader: Any = None  # the engine's start-up report (launch -> wait_ready)
        self.info: EngineReady | None = None
        self.dead = False
        self.last_receive = time.time()
        self.pending_replies: dict[type, asyncio.Queue] = {}
        self.tasks: list[asyncio.Task] = []
        self._closed = False

    # ---- process lifecycle -----------------------------------------------------------------------
    def spawn(self) -> EngineReady:
        """Starts the engine process and waits (blocking: off the event loop when one runs) for
        its EngineReady. RuntimeError when it fails to start."""
        self.launch()
        return self.wait_ready()

    def launch(self) -> None:
        """Starts the engine process (``wait_ready`` then waits for it). The calling thread must
        outlive the engine: the process is told to exit when its parent thread ends."""
        from sglang.srt.managers.engine_process import run_engine_process

        ctx = mp.get_context("spawn")
        self._ready_reader, writer = ctx.Pipe(duplex=False)
        init_method = None
        if self.args.tp_size > 1:
            from sglang.srt.managers.tp_worker import run_tp_follower

            init_method = self._tp_init_method()
            self.followers = [ctx.Process(target=run_tp_follower,
                                          args=(self.args, rank, init_method, self.dp_rank),
                                          daemon=True)
                              for rank in self.args.node_tp_ranks() if rank != 0]
        self.proc = ctx.Process(
            target=run_engine_process,
            args=(self.args, f"ipc://{self.ipc_dir}/to_engine",
                  f"ipc://{self.ipc_dir}/from_engine", writer, self.dp_rank, init_method),
            daemon=True,
        )
        self.proc.start()
        for follower in self.followers:
            follower.start()
        writer.close()

    def _tp_init_method(self) -> str:
        """Where the TP ranks meet: with --nnodes > 1 node 0's --dist-init-addr (other nodes'
        ranks join there), else a file in this client's IPC folder (one per replica)."""
        if self.args.nnodes == 1:
            return f"file://{self.ipc_dir}/tp_init_{time.time_ns()}"
        from sglang.srt.server_args import dist_init_url

        url = dist_init_url(self.args.dist_init_addr or "")
        logger.info("TP ranks meet at %s: this node runs ranks %s; waiting for the %d other "
                    "node(s)", url, list(self.args.node_tp_ranks()), self.args.nnodes - 1)
        return url

    def _follower_died(self) -> mp.Process | None:
        return next((f for f in self.followers if not f.is_alive()), None)

    def wait_ready(self) -> EngineReady:
        """Waits for the launched engine's EngineReady; RuntimeError when it fails to start."""
        proc, reader = self.proc, self._ready_reader
        deadline = time.time() + ENGINE_START_TIMEOUT_S
        while time.time() < deadline:
            if reader.poll(0.5):
                try:
                    kind, payload = reader.recv()
                except EOFError:
                    break
                if kind == "ready":
                    self.info = payload
                    return payload
                proc.join(10)
                self._kill_followers()
                raise RuntimeError(f"The engine failed to start: {payload}")
            if not proc.is_alive():
                break
            dead = self._follower_died()
            if dead is not None:
                proc.kill()
                self._kill_followers()
                raise RuntimeError(f"A tensor-parallel rank exited during start-up (exit code "
                                   f"{dead.exitcode}); see its log.")
        code = proc.exitcode
        proc.kill()
        self._kill_followers()
        raise RuntimeError(f"The engine process exited during start-up (exit code {code}).")

    def _kill_followers(self) -> None:
        for follower in self.followers:
            if follower.is_alive():
                follower.kill()
            if follower.pid is not None:
                follower.join(5)

    def start(self) -> None:
        """Starts the receive and watchdog tasks on the running event loop (call once)."""
        if self.tasks:
            return
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._recv_loop()), loop.create_task(self._watchdog())]

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self.tasks:
            task.cancel()
        if self.proc is not None and self.proc.is_alive():
            # SIGTERM: shutdown may run outside the event loop that owns the sockets.
            self.proc.terminate()
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(5)
        for follower in self.followers:  # normally gone already: rank 0 told them to stop
            if follower.pid is None:  # never started (the engine failed before)
                continue
            follower.join(2)
            if follower.is_alive():
                follower.terminate()
                follower.join(5)
            if follower.is_alive():
                follower.kill()
                follower.join(5)
        self.send_sock.close(0)
        self.recv_sock.close(0)
        self.ctx.term()
        shutil.rmtree(self.ipc_dir, ignore_errors=True)

    # ---- I/O -------------------------------------------------------------------------------------
    async def _recv_loop(self) -> None:
        while True:
            msg = await self.recv_sock.recv_pyobj()
            self.last_receive = time.time()
            if isinstance(msg, BatchTokenOut):
                result = self.listener.on_batch(msg)
                if asyncio.iscoroutine(result):
                    await result
            elif isinstance(msg, RequestError):
                self.listener.on_request_error(msg)
            else:
                queue = self.pending_replies.get(type(msg))
                if queue is not None:
                    queue.put_nowait(msg)

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(WATCHDOG_PERIOD_S)
            if not self.proc.is_alive():
                self._mark_dead()
                return
            if self._follower_died() is not None:  # rank 0 cannot run a step without it
                logger.error("a tensor-parallel rank died; stopping the engine")
                self.proc.kill()
                self._mark_dead()
                return

    def _mark_dead(self) -> None:
        if self.dead:
            return
        self.dead = True
        logger.error("the engine process died (exit code %s)", self.proc.exitcode)
        for queue in self.pending_replies.values():
            queue.put_nowait(None)
        self.listener.on_engine_death()

    def check_alive(self) -> None:
        if self.dead:
            raise EngineDeadError("The engine process is not running.")

    async def send(self, msg: Any) -> None:
        self.check_alive()
        await self.send_sock.send_pyobj(msg)

    async def request(self, msg: Any, reply_type: type, timeout: float = 60.0) -> Any:
        """Sends ``msg`` and awaits the engine's reply of ``reply_type``."""
        self.check_alive()
        queue = self.pending_replies.setdefault(reply_type, asyncio.Queue())
        await self.send_sock.send_pyobj(msg)
        reply = await asyncio.wait_for(queue.get(), timeout)
        if reply is None:
            raise EngineDeadError("The engine process is not running.")
        return reply

    async def request_each(self, msg: Any, reply_type: type, timeout: float = 60.0) -> list[Any]:
        """``request`` as a list of every engine's reply (EngineGroup's interface)."""
        return [await self.request(msg, reply_type, timeout)]

    async def abort(self, rid: str = "", abort_all: bool = False) -> None:
        if not self.dead:
            await self.send_sock.send_pyobj(AbortReq(rid=rid, abort_all=abort_all))
