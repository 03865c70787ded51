"""Data parallelism (``--dp-size N``): N engine replicas behind a router, as one engine.

``EngineGroup`` has the interface the tokenizer manager uses on an ``EngineClient`` (spawn,
start, shutdown, dead, check_alive, last_receive, send, request, request_each, abort) over N
clients, each with its own engine process (a full EngineCore: scheduler, radix cache, KV pool).
Generation requests go to the replica the router's policy (``router.py``) picks for their prompt;
the group remembers each request's replica (rid -> replica, and the load of every replica) until
its final output or refusal passes on its way to the listener (the tokenizer manager). Requests
that must share a replica stay together: those of one ``send`` with the same prompt (the n > 1
samples), and the requests that follow a prefill-only request of their prompt (the n > 1 warm-up
of ``TokenizerManager._prefill_shared_prompts``, sent just before). Control messages fan out to
every replica and their replies are combined (``request``); aborts go to the request's replica.
One replica dying makes the group dead: the listener hears of it once, and ``--engine-restart``
replaces the whole group. Runs on the HTTP process's event loop (``spawn``/``shutdown`` may run
off it).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from sglang.srt.managers.engine_client import EngineClient, EngineDeadError, EngineListener
from sglang.srt.managers.io_struct import (
    BatchTokenOut,
    EngineReady,
    ExpertDistributionResp,
    FlushCacheResp,
    LoraAdapterResp,
    RequestError,
    TokenizedGenerateReq,
    UpdateWeightsFromDiskResp,
)
from sglang.srt.managers.router import Prompt, make_policy
from sglang.srt.server_args import ServerArgs

logger = logging.getLogger("sglang.engine_group")
# Prompts of recent prefill-only requests (the n > 1 warm-ups) whose replica the next request
# with that prompt follows; bounded, in case that request never comes.
MAX_PREFILLED_PROMPTS = 1024


def engine_for(server_args: ServerArgs, listener: EngineListener) -> EngineClient | EngineGroup:
    """The tokenizer manager's engine: one EngineClient, or an EngineGroup with --dp-size > 1."""
    if server_args.dp_size == 1:
        return EngineClient(server_args, listener)
    return EngineGroup(server_args, listener)


class _ReplicaListener:
    """One replica's listener: the group's bookkeeping, then the tokenizer manager."""

    def __init__(self, group: EngineGroup, rank: int) -> None:
        self.group = group
        self.rank = rank

    def on_batch(self, batch: BatchTokenOut) -> Any:
        for out in batch.outputs:
            if out.finish_reason is not None:
                self.group.finished(out.rid)
        return self.group.listener.on_batch(batch)

    def on_request_error(self, error: RequestError) -> None:
        self.group.finished(error.rid)
        self.group.listener.on_request_error(error)

    def on_engine_death(self) -> None:
        self.group.replica_died(self.rank)


class EngineGroup:
    def __init__(self, server_args: ServerArgs, listener: EngineListener) -> None:
        self.args = server_args
        self.listener = listener
        n = server_args.dp_size
        self.clients = [EngineClient(server_args, _ReplicaListener(self, rank), dp_rank=rank)
                        for rank in range(n)]
        self.policy = make_policy(server_args.load_balance_method, n)
        self.loads = [0] * n  # requests routed to each replica and not finished
        self.rid_to_replica: dict[str, int] = {}
        self.prefilled: OrderedDict[tuple, int] = OrderedDict()  # prompt key -> replica
        self.info: EngineReady | None = None
        self._death_reported = False

    # ---- lifecycle -------------------------------------------------------------------------------
    def spawn(self) -> EngineReady:
        """Starts every replica at once and waits for all (blocking); their EngineReady are
        alike (same arguments), the first is returned. RuntimeError naming the replica when one
        fails to start (the others are stopped)."""
        try:
            for client in self.clients:
                client.launch()
            infos = []
            for rank, client in enumerate(self.clients):
                try:
                    infos.append(client.wait_ready())
                except RuntimeError as exc:
                    raise RuntimeError(f"Engine replica {rank} (of --dp-size "
                                       f"{len(self.clients)}): {exc}") from None
        except BaseException:
            self.shutdown()
            raise
        self.info = infos[0]
        return self.info

    def start(self) -> None:
        for client in self.clients:
            client.start()

    def shutdown(self) -> None:
        for client in self.clients:  # signal every replica first: they exit in parallel
            if client.proc is not None and client.proc.is_alive():
                client.proc.terminate()
        for client in self.clients:
            client.shutdown()

    @property
    def dead(self) -> bool:
        return any(client.dead for client in self.clients)

    def check_alive(self) -> None:
        if self.dead:
            raise EngineDeadError("An engine replica process is not running.")

    @property
    def last_receive(self) -> float:
        """When any replica last sent something."""
        return max(client.last_receive for client in self.clients)

    def replica_died(self, rank: int) -> None:
        if self._death_reported:
            return
        self._death_reported = True
        logger.error("engine replica %d of %d died", rank, len(self.clients))
        self.listener.on_engine_death()

    # ---- generation ------------------------------------------------------------------------------
    async def send(self, msg: TokenizedGenerateReq | list[TokenizedGenerateReq]) -> None:
        """Routes each request to a replica and sends each replica its share in one message."""
        self.check_alive()
        reqs = msg if isinstance(msg, list) else [msg]
        shares = self._route(reqs)
        for rank, share in shares.items():
            try:
                await self.clients[rank].send(share if isinstance(msg, list) else share[0])
            except EngineDeadError:
                for req in share:
                    self.finished(req.rid)
                raise

    def _route(self, reqs: list[TokenizedGenerateReq]) -> dict[int, list[TokenizedGenerateReq]]:
        """Each request's replica (recorded), one policy decision per distinct prompt."""
        chosen: dict[tuple, int] = {}
        shares: dict[int, list[TokenizedGenerateReq]] = {}
        for req in reqs:
            key = _prompt_key(req)
            rank = chosen.get(key)
            if rank is None:
                rank = self.prefilled.pop(key, None)
                if rank is None:
                    prompt = Prompt(req.input_ids, f"{req.cache_namespace}|{req.lora_name}")
                    rank = self.policy.choose(prompt, self.loads)
                chosen[key] = rank
            if req.sampling.max_new_tokens == 0 and not self.info.is_embedding:
                self._remember_prefill(key, rank)
            self.rid_to_replica[req.rid] = rank
            self.loads[rank] += 1
            shares.setdefault(rank, []).append(req)
        return shares

    def _remember_prefill(self, key: tuple, rank: int) -> None:
        self.prefilled[key] = rank
        self.prefilled.move_to_end(key)
        while len(self.prefilled) > MAX_PREFILLED_PROMPTS:
            self.prefilled.popitem(last=False)

    def finished(self, rid: str) -> None:
        """Forgets a request that ended (its final output or refusal), if it is still known."""
        rank = self.rid_to_replica.pop(rid, None)
        if rank is not None:
            self.loads[rank] -= 1

    async def abort(self, rid: str = "", abort_all: bool = False) -> None:
        """Aborts one request on its replica (on every replica when it is not known: it may have
        just finished), or every request on every replica."""
        rank = None if abort_all else self.rid_to_replica.get(rid)
        targets = self.clients if rank is None else [self.clients[rank]]
        for client in targets:
            await client.abort(rid, abort_all)

    # ---- control messages ------------------------------------------------------------------------
    async def request_each(self, msg: Any, reply_type: type, timeout: float = 60.0) -> list[Any]:
        """Sends ``msg`` to every replica and returns their replies, in replica order."""
        self.check_alive()
        replies = await asyncio.gather(
            *(client.request(msg, reply_type, timeout) for client in self.clients),
            return_exceptions=True)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return replies

    async def request(self, msg: Any, reply_type: type, timeout: float = 60.0) -> Any:
        """Sends ``msg`` to every replica; one reply for all (``COMBINE``): a success only when
        every replica succeeded, with the first failure's message."""
        combine = COMBINE.get(reply_type)
        if combine is None:
            raise TypeError(f"{reply_type.__name__} replies are not combined; use request_each.")
        replies = await self.request_each(msg, reply_type, timeout)
        if reply_type is FlushCacheResp and _all_ok(replies):
            self.policy.forget_cached()
        return combine(replies)


def _prompt_key(req: TokenizedGenerateReq) -> tuple:
    return (req.cache_namespace, req.lora_name, len(req.input_ids), hash(tuple(req.input_ids)))


def _all_ok(replies: list[Any]) -> bool:
    return all(r.success for r in replies)


def _first_failure(replies: list[Any], field: str) -> Any:
    """``field`` of the first reply that failed (of the first reply when none did)."""
    return next((getattr(r, field) for r in replies if not r.success), getattr(replies[0], field))


def _expert_distribution(replies: list[ExpertDistributionResp]) -> ExpertDistributionResp:
    if not _all_ok(replies):
        return ExpertDistributionResp(False, _first_failure(replies, "message"))
    return ExpertDistributionResp(True, "; ".join(r.message for r in replies if r.message))


# How the replies of every replica become one (see EngineGroup.request).
COMBINE: dict[type, Callable[[list[Any]], Any]] = {
    FlushCacheResp: lambda rs: FlushCacheResp(_all_ok(rs)),
    UpdateWeightsFromDiskResp: lambda rs: UpdateWeightsFromDiskResp(
        _all_ok(rs), _first_failure(rs, "message")),
    ExpertDistributionResp: _expert_distribution,  # a dump: every replica's file
    # the adapters served afterwards: the last replica's
    LoraAdapterResp: lambda rs: LoraAdapterResp(
        _all_ok(rs), _first_failure(rs, "error_message"), rs[-1].loaded_adapters),
}
