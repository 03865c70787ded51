"""EngineGroup's bookkeeping over fake replicas (no engine processes): routing by prompt, the
n > 1 warm-up and its samples on one replica, loads released by final outputs and refusals,
aborts to the request's replica, fanned-out control replies combined, one death report."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from sglang.srt.managers.engine_client import EngineDeadError
from sglang.srt.managers.engine_group import EngineGroup, _ReplicaListener, engine_for
from sglang.srt.managers.finish_reason import FinishReason
from sglang.srt.managers.io_struct import (
    BatchTokenOut,
    ExpertDistributionResp,
    FlushCacheReq,
    FlushCacheResp,
    GetInternalStateReq,
    InternalStateResp,
    LoraAdapterResp,
    ReqOutput,
    RequestError,
    TokenizedGenerateReq,
)
from sglang.srt.sampling.sampling_params import SamplingParams
from sglang.srt.server_args import ServerArgs


class FakeReplica:
    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.aborts: list[tuple[str, bool]] = []
        self.replies: dict[type, Any] = {}
        self.dead = False
        self.proc = None
        self.last_receive = 0.0

    async def send(self, msg: Any) -> None:
        if self.dead:
            raise EngineDeadError("dead")
        self.sent.append(msg)

    async def request(self, msg: Any, reply_type: type, timeout: float = 60.0) -> Any:
        if self.dead:
            raise EngineDeadError("dead")
        return self.replies[reply_type]

    async def abort(self, rid: str = "", abort_all: bool = False) -> None:
        self.aborts.append((rid, abort_all))

    def shutdown(self) -> None:
        pass

    def rids(self) -> list[str]:
        out = []
        for msg in self.sent:
            out += [r.rid for r in (msg if isinstance(msg, list) else [msg])]
        return out


class Listener:
    def __init__(self) -> None:
        self.batches: list[BatchTokenOut] = []
        self.errors: list[RequestError] = []
        self.deaths = 0

    def on_batch(self, batch: BatchTokenOut) -> None:
        self.batches.append(batch)

    def on_request_error(self, error: RequestError) -> None:
        self.errors.append(error)

    def on_engine_death(self) -> None:
        self.deaths += 1


def make_group(method: str = "round_robin", n: int = 2) -> tuple[EngineGroup, Listener]:
    listener = Listener()
    group = EngineGroup(ServerArgs(model_path="x", dp_size=n, load_balance_method=method),
                        listener)
    for client in group.clients:
        client.shutdown()  # never spawned: the fakes stand in
    group.clients = [FakeReplica() for _ in range(n)]
    group.info = SimpleNamespace(is_embedding=False)
    return group, listener


def req(rid: str, ids: list[int], max_new_tokens: int = 4) -> TokenizedGenerateReq:
    return TokenizedGenerateReq(rid=rid, input_ids=ids, sampling=SamplingParams(
        max_new_tokens=max_new_tokens))


def final(rid: str) -> ReqOutput:
    return ReqOutput(rid=rid, new_token_ids=[1], finish_reason=FinishReason.length_limit(1),
                     prompt_tokens=3, cached_tokens=0, num_retractions=0)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_dp_1_is_a_plain_engine_client() -> None:
    engine = engine_for(ServerArgs(model_path="x"), Listener())
    try:
        assert type(engine).__name__ == "EngineClient"
    finally:
        engine.shutdown()


def test_round_robin_batch_and_same_prompt_requests_share_a_replica() -> None:
    group, _ = make_group()
    a, b = group.clients
    run(group.send([req("r0", [1, 2]), req("r1", [3, 4]), req("r2", [5, 6]),
                    req("r3", [1, 2])]))
    assert a.rids() == ["r0", "r2", "r3"] and b.rids() == ["r1"]
    assert len(a.sent) == 1 and isinstance(a.sent[0], list)  # one message per replica
    assert group.loads == [3, 1]
    run(group.send(req("single", [7])))
    assert b.sent[-1].rid == "single"  # a single request stays a single message


def test_n_samples_follow_their_warm_up_request() -> None:
    group, _ = make_group()
    a, b = group.clients
    run(group.send(req("other", [9])))  # round robin's next is replica 1
    run(group.send(req("warm", [1, 2, 3], max_new_tokens=0)))
    assert b.rids() == ["warm"]
    group.finished("warm")
    run(group.send([req(f"s{i}", [1, 2, 3]) for i in range(4)]))
    assert b.rids() == ["warm", "s0", "s1", "s2", "s3"]
    assert not group.prefilled  # used once
    run(group.send(req("again", [1, 2, 3])))  # later requests are routed afresh
    assert a.rids() == ["other", "again"]


def test_final_outputs_and_refusals_release_the_load() -> None:
    group, listener = make_group("shortest_queue")
    run(group.send([req("a", [1]), req("b", [2])]))
    assert group.loads == [1, 1]  # the load counts as soon as a request is routed
    run(group.send([req("c", [3]), req("d", [4])]))
    rank_of = dict(group.rid_to_replica)
    out = ReqOutput(rid="a", new_token_ids=[5], finish_reason=None, prompt_tokens=1,
                    cached_tokens=0, num_retractions=0)
    _ReplicaListener(group, rank_of["a"]).on_batch(BatchTokenOut([out, final("b")]))
    assert "a" in group.rid_to_replica and "b" not in group.rid_to_replica
    _ReplicaListener(group, rank_of["c"]).on_request_error(RequestError("c", "bad"))
    assert sorted(group.rid_to_replica) == ["a", "d"] and sum(group.loads) == 2
    assert len(listener.batches) == 1 and listener.errors[0].rid == "c"


def test_aborts_go_to_the_request_replica() -> None:
    group, _ = make_group()
    a, b = group.clients
    run(group.send([req("x", [1]), req("y", [2])]))
    run(group.abort("y"))
    assert a.aborts == [] and b.aborts == [("y", False)]
    run(group.abort("unknown"))  # maybe just finished: every replica
    assert a.aborts == [("unknown", False)] and b.aborts[-1] == ("unknown", False)
    run(group.abort(abort_all=True))
    assert a.aborts[-1] == ("", True) and b.aborts[-1] == ("", True)


def test_control_replies_are_combined() -> None:
    group, _ = make_group("cache_aware")
    a, b = group.clients
    a.replies[FlushCacheResp] = FlushCacheResp(True)
    b.replies[FlushCacheResp] = FlushCacheResp(True)
    run(group.send(req("p", list(range(32)))))
    assert run(group.request(FlushCacheReq(), FlushCacheResp)).success
    assert all(len(index) == 0 for index in group.policy.indexes)  # the router forgot too
    b.replies[FlushCacheResp] = FlushCacheResp(False)
    assert not run(group.request(FlushCacheReq(), FlushCacheResp)).success
    a.replies[LoraAdapterResp] = LoraAdapterResp(False, "bad folder", {})
    b.replies[LoraAdapterResp] = LoraAdapterResp(True, None, {"x": "/x"})
    lora = run(group.request(None, LoraAdapterResp))
    assert (lora.success, lora.error_message, lora.loaded_adapters) == (False, "bad folder",
                                                                        {"x": "/x"})
    a.replies[ExpertDistributionResp] = ExpertDistributionResp(True, "/tmp/a.pt")
    b.replies[ExpertDistributionResp] = ExpertDistributionResp(True, "/tmp/b.pt")
    assert run(group.request(None, ExpertDistributionResp)).message == "/tmp/a.pt; /tmp/b.pt"
    a.replies[InternalStateResp] = InternalStateResp({"idle": True})
    b.replies[InternalStateResp] = InternalStateResp({"idle": False})
    states = run(group.request_each(GetInternalStateReq(), InternalStateResp))
    assert [s.state["idle"] for s in states] == [True, False]
    with pytest.raises(TypeError, match="request_each"):
        run(group.request(GetInternalStateReq(), InternalStateResp))


def test_one_dead_replica_makes_the_group_dead_once() -> None:
    group, listener = make_group()
    group.clients[1].dead = True
    _ReplicaListener(group, 1).on_engine_death()
    _ReplicaListener(group, 0).on_engine_death()
    assert listener.deaths == 1 and group.dead
    with pytest.raises(EngineDeadError):
        group.check_alive()
    with pytest.raises(EngineDeadError):
        run(group.send(req("z", [1])))
    with pytest.raises(EngineDeadError):
        run(group.request_each(FlushCacheReq(), FlushCacheResp))
