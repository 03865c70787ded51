"""The engine process: loads the model, then loops receive -> step -> send over ZMQ.

Started by the engine client (spawned, one per GPU/rank). Reads pickled messages from ``ipc_in``
(requests, aborts, cache flushes, state queries), runs ``EngineCore.step`` whenever there is work,
and pushes ``BatchTokenOut`` / replies to ``ipc_out``. It reports its start-up through
``ready_conn`` (``("ready", EngineReady)`` or ``("error", message)``), dies with its parent
(PR_SET_PDEATHSIG), and exits on ``ShutdownReq`` or SIGTERM (between two steps). A request whose ``add_request`` raises is refused
with a 500 and the loop goes on; a failing step ends its batch inside ``EngineCore.step``. What
still escapes (steps failing again and again, a core check) is logged and ends the process: the
HTTP side fails pending requests and exits or restarts the engine.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import traceback
from typing import Any

import zmq

from sglang.srt.managers.io_struct import (
    AbortReq,
    BatchTokenOut,
    ExpertDistributionReq,
    ExpertDistributionResp,
    FlushCacheReq,
    FlushCacheResp,
    GetInternalStateReq,
    InternalStateResp,
    LoadLoraAdapterReq,
    LoraAdapterResp,
    RequestError,
    ShutdownReq,
    TokenizedGenerateReq,
    UnloadLoraAdapterReq,
    UpdateWeightsFromDiskReq,
)
from sglang.srt.server_args import ServerArgs

logger = logging.getLogger("sglang.engine")
POLL_MS_IDLE = 500
NVIDIA_GPUS_DIR = "/proc/driver/nvidia/gpus"


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def run_engine_process(server_args: ServerArgs, ipc_in: str, ipc_out: str, ready_conn: Any,
                       dp_rank: int | None = None, tp_init_method: str | None = None) -> None:
    """``dp_rank``: this replica's index with --dp-size > 1 (its logs say so; on CUDA it runs on
    its own GPUs, on a CPU with its share of the threads: ``place_rank_process``). ``tp_init_method``: with
    --tp-size > 1, where this process (TP rank 0) meets the followers (``tp_worker.py``)."""
    _die_with_parent()
    # OpenMP's default wait policy (spin briefly, then sleep) is kept on purpose: PASSIVE made
    # every parallel region wake sleeping threads and doubled the CPU decode step (89 vs 41 ms at
    # bs1 for SmolLM2); ACTIVE spins forever and starves other processes on shared cores. Users
    # can still set OMP_WAIT_POLICY themselves.
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and tells us
    logging.basicConfig(
        level=getattr(logging, server_args.log_level.upper(), logging.INFO),
        format=f"[%(asctime)s engine{'' if dp_rank is None else f' dp{dp_rank}'}] %(message)s",
    )
    parent = os.getppid()
    try:
        place_rank_process(server_args, dp_rank)
        from sglang.srt.managers.embedding_core import EmbeddingEngineCore, serves_encoder

        if server_args.is_embedding and serves_encoder(server_args):
            if server_args.tp_size > 1:
                raise ValueError("encoder embedding models (BERT-style) do not support "
                                 "--tp-size > 1 yet; decoder embedding models do")
            engine: Any = EmbeddingEngineCore(server_args)
        else:  # generation, or a decoder embedding model (EngineCore's embedding mode)
            from sglang.srt.managers.engine_core import EngineCore

            engine = EngineCore(server_args, dist_init_method=tp_init_method)
    except Exception as exc:  # report any start-up failure to the parent, clearly
        logger.error("engine start-up failed:\n%s", traceback.format_exc())
        ready_conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    ctx = zmq.Context()
    recv = ctx.socket(zmq.PULL)
    recv.connect(ipc_in)
    send = ctx.socket(zmq.PUSH)
    send.connect(ipc_out)
    ready_conn.send(("ready", engine.ready_info()))
    ready_conn.close()
    logger.info("engine ready")
    # From here SIGTERM (the client's shutdown, or the parent's death) ends the loop between two
    # steps, so that close() can tell the TP followers to stop while they are in step with us.
    signal.signal(signal.SIGTERM, _request_stop)
    try:
        _serve(engine, recv, send, parent)
        close = getattr(engine, "close", None)
        if close is not None:
            close()  # the TP followers stop too
    except Exception:
        logger.error("engine crashed:\n%s", traceback.format_exc())
        os._exit(1)
    finally:
        recv.close(0)
        send.close(0)
        ctx.term()


def place_rank_process(args: ServerArgs, dp_rank: int | None) -> None:
    """Where an engine rank process (rank 0 or a TP follower) of replica ``dp_rank`` runs, set
    before torch or CUDA start: on CUDA replica i sees only its GPUs (i * k .. i * k + k - 1 of
    the visible ones, k = its ranks on this machine; rank r of it takes the r-th); on a CPU the
    machine's threads are shared by every rank process of every replica."""
    per_replica = args.ranks_per_node
    if args.device == "cuda":
        if dp_rank is not None:
            _use_gpus(dp_rank * per_replica, per_replica, dp_rank)
        return
    processes = per_replica * (args.dp_size if dp_rank is not None else 1)
    if processes > 1:
        _share_cpu_threads(processes)


def _use_gpus(first: int, count: int, dp_rank: int) -> None:
    """Makes visible GPUs first .. first + count - 1 this process's only ones (before CUDA is
    initialised)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = [g.strip() for g in visible.split(",") if g.strip()]
    elif os.path.isdir(NVIDIA_GPUS_DIR):  # counted without initialising CUDA
        gpus = [str(i) for i in range(len(os.listdir(NVIDIA_GPUS_DIR)))]
    else:
        gpus = [str(i) for i in range(first + count)]  # CUDA reports a missing one
    if first + count > len(gpus):
        raise RuntimeError(f"--dp-size replica {dp_rank} needs {count} GPU(s) of its own "
                           f"(GPUs {first}..{first + count - 1}); {len(gpus)} visible "
                           "(CUDA_VISIBLE_DEVICES).")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[first:first + count])


def _share_cpu_threads(num_replicas: int) -> None:
    """CPU replicas share the machine's cores: each runs 1/num_replicas of torch's default
    threads, unless OMP_NUM_THREADS says how many."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads() // num_replicas))


_stop_requested = False


def _request_stop(signum: int, frame: Any) -> None:
    global _stop_requested
    _stop_requested = True


def _serve(engine: Any, recv: zmq.Socket, send: zmq.Socket, parent: int) -> None:
    poller = zmq.Poller()
    poller.register(recv, zmq.POLLIN)
    heartbeat = getattr(engine, "heartbeat", None)
    while not _stop_requested:
        busy = not engine.idle()
        events = dict(poller.poll(0 if busy else POLL_MS_IDLE))
        while events.get(recv) == zmq.POLLIN:
            msg = recv.recv_pyobj()
            if isinstance(msg, ShutdownReq):
                return
            _handle(engine, msg, send)
            events = dict(poller.poll(0))
        if not busy and os.getppid() != parent:
            return  # orphaned
        if heartbeat is not None:  # (also while busy: a step may wait on grammars, not forward)
            heartbeat()
        outs = engine.step()
        if outs:
            send.send_pyobj(BatchTokenOut(outs))


def _handle(engine: Any, msg: Any, send: zmq.Socket) -> None:
    if isinstance(msg, list):
        for m in msg:
            _handle(engine, m, send)
    elif isinstance(msg, TokenizedGenerateReq):
        try:
            error = engine.add_request(msg)
        except Exception as exc:  # one bad request must not end the engine
            logger.exception("adding request %s failed", msg.rid)
            error = RequestError(msg.rid, f"Internal error while adding the request: "
                                          f"{type(exc).__name__}: {exc}", 500)
        if error is not None:
            send.send_pyobj(error)
    elif isinstance(msg, AbortReq):
        outs = engine.abort(msg.rid, msg.abort_all, msg.message)
        if outs:
            send.send_pyobj(BatchTokenOut(outs))
    elif isinstance(msg, FlushCacheReq):
        send.send_pyobj(FlushCacheResp(engine.flush_cache()))
    elif isinstance(msg, GetInternalStateReq):
        send.send_pyobj(InternalStateResp(engine.internal_state()))
    elif isinstance(msg, UpdateWeightsFromDiskReq):
        send.send_pyobj(engine.update_weights_from_disk(msg))
    elif isinstance(msg, ExpertDistributionReq):
        send.send_pyobj(_expert_distribution(msg.action))
    elif isinstance(msg, (LoadLoraAdapterReq, UnloadLoraAdapterReq)):
        update = getattr(engine, "update_lora", None)
        send.send_pyobj(update(msg) if update is not None else LoraAdapterResp(
            False, "LoRA adapters are not served by this engine.", {}))
    else:
        logger.warning("engine got an unknown message %r", type(msg).__name__)


def _expert_distribution(action: str) -> ExpertDistributionResp:
    """start / stop / dump of this process's expert-distribution recorder."""
    from sglang.srt.eplb.expert_distribution import get_global_expert_distribution_recorder

    recorder = get_global_expert_distribution_recorder()
    try:
        if action == "start":
            recorder.start_record()
        elif action == "stop":
            recorder.stop_record()
        else:
            return ExpertDistributionResp(True, str(recorder.dump_record()))
    except (RuntimeError, OSError) as exc:
        return ExpertDistributionResp(False, str(exc))
    return ExpertDistributionResp(True, "")
