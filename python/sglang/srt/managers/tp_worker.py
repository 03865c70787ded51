"""Tensor parallelism, the engine side: rank 0 leads, ranks > 0 follow.

With ``--tp-size N`` the engine client starts N processes joined in one ``torch.distributed``
group (``dist_init_method``: a ``file://`` in the client's IPC folder; with ``--nnodes > 1``
``--dist-init-addr``, other machines' ranks started by ``worker_node.py``). Rank 0 is the usual
engine process (``EngineCore``: the C++ scheduler, sampling, grammars, the ZMQ side); ranks > 0 run
``run_tp_follower``: a loop that receives, from rank 0, one ``StepMessage`` (``broadcast_object``)
per forward pass and runs the same forward on its shard of the model. Every forward is a sequence
of collectives, so the ranks must run the same forwards in the same order: rank 0 broadcasts each
step before its ``runner.forward`` (``TPLeader.broadcast_step``), and the control messages that
touch the model (weight updates, LoRA adapters loaded, unloaded and dropped) the same way. A
flush of the radix cache touches no rank's model and is not sent. ``stop`` ends the followers;
``keepalive`` is sent by an idle rank 0 (every ``KEEPALIVE_S``) so that a follower's wait never
reaches the group's timeout (``SGLANG_TP_TIMEOUT``), and so that a dead rank (another machine's
too) fails rank 0's broadcast within seconds.

With ``--enable-lora`` every follower has its own ``LoraManager`` holding its shard of each
adapter. A load is checked on rank 0 first (it reads the same files) and only then sent with
its load id; each follower reads its shard, and the ranks agree on success (``agree``), all
discarding the adapter when one failed. Each step carries rank 0's ``LoraStepInfo`` (segments,
and which adapter each used slot holds), which the follower mirrors before its forward.

The KV pools agree: every rank computes the tokens its pool can hold, the group keeps the minimum
(``agree_max_total_tokens``) and rank 0's scheduler sizes the pool from it, whose slot count it
then broadcasts (``TPLeader.share_num_slots``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import traceback
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from sglang.srt.lora.manager import LoraManager, LoraStepInfo

logger = logging.getLogger("sglang.tp")
TP_TIMEOUT_S = float(os.environ.get("SGLANG_TP_TIMEOUT", "120"))
# An idle rank 0 broadcasts this often: it keeps the followers' wait under the timeout, and a
# dead rank (another node's, which no local watchdog sees) fails the broadcast within seconds.
KEEPALIVE_S = min(2.0, TP_TIMEOUT_S / 4)


@dataclasses.dataclass
class StepMessage:
    """What rank 0 sends its followers: one forward pass, a control action, or a stop.

    ``kind``: "step" (the arrays below), "update_weights" (``model_path``, ``load_format``),
    "load_lora" (``lora_name``, ``lora_path``, ``lora_ids``: the load id), "unload_lora"
    (``lora_name``), "drop_lora" (``lora_ids``: retired adapters no request uses any more),
    "keepalive" or "stop". A step's arrays are those ``ForwardBatch.from_plan`` reads, with the
    batch's rows of the request-to-token table compacted (``table``; ``req_pool_indices`` is
    ``arange(batch_size)``). ``embed_overrides``: rows of an extend step taken from requests'
    ``input_embeds`` or from rank 0's vision tower (start row, [rows, hidden] CPU tensor) instead
    of the embedding table.
    ``lora``: the step's adapter segments and slots (None: no row runs with an adapter).
    """

    kind: str
    mode: int = 0
    input_ids: np.ndarray | None = None
    positions: np.ndarray | None = None
    out_slots: np.ndarray | None = None
    req_pool_indices: np.ndarray | None = None
    seq_lens: np.ndarray | None = None
    prefix_lens: np.ndarray | None = None
    extend_lens: np.ndarray | None = None
    extend_start: np.ndarray | None = None
    sample_rows: np.ndarray | None = None
    table: np.ndarray | None = None
    logits_rows: np.ndarray | None = None
    capture_hidden: bool = False
    embed_overrides: list[tuple[int, torch.Tensor]] | None = None
    model_path: str = ""
    load_format: str | None = None
    lora: LoraStepInfo | None = None
    mrope_positions: np.ndarray | None = None  # [3, T] (M-RoPE models: an image prompt's rows)
    lora_name: str = ""
    lora_path: str = ""
    lora_ids: tuple[int, ...] = ()

    @classmethod
    def from_plan(cls, plan: Any, req_to_token: torch.Tensor, logits_rows: np.ndarray | None,
                  capture_hidden: bool, positions: np.ndarray | None,
                  embed_overrides: list[tuple[int, torch.Tensor]] | None,
                  lora: LoraStepInfo | None = None,
                  mrope_positions: np.ndarray | None = None) -> StepMessage:
        def arr(x: Any) -> np.ndarray:
            return np.ascontiguousarray(x, dtype=np.int32)

        seq_lens = arr(plan.seq_lens)
        pool_rows = arr(plan.req_pool_indices)
        max_len = int(seq_lens.max()) if len(seq_lens) else 0
        table = np.ascontiguousarray(req_to_token.numpy()[pool_rows, :max_len], dtype=np.int32)
        return cls(
            kind="step", mode=int(plan.mode), input_ids=arr(plan.input_ids),
            positions=arr(plan.positions if positions is None else positions),
            out_slots=arr(plan.out_slots),
            req_pool_indices=np.arange(len(seq_lens), dtype=np.int32), seq_lens=seq_lens,
            prefix_lens=arr(plan.prefix_lens), extend_lens=arr(plan.extend_lens),
            extend_start=arr(plan.extend_start), sample_rows=arr(plan.sample_rows), table=table,
            logits_rows=None if logits_rows is None else arr(logits_rows),
            capture_hidden=capture_hidden, embed_overrides=embed_overrides or None, lora=lora,
            mrope_positions=mrope_positions)


class TPLeader:
    """Rank 0's side: broadcasts what the followers must run."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self.last_send = time.monotonic()

    def send(self, msg: StepMessage) -> None:
        self.group.broadcast_object(msg, src=0)
        self.last_send = time.monotonic()

    def broadcast_step(self, msg: StepMessage) -> None:
        self.send(msg)

    def keepalive(self) -> None:
        if time.monotonic() - self.last_send >= KEEPALIVE_S:
            self.send(StepMessage("keepalive"))

    def share_num_slots(self, num_slots: int) -> None:
        self.group.broadcast_object(int(num_slots), src=0)

    def stop(self) -> None:
        try:
            self.send(StepMessage("stop"))
        except Exception:  # a follower already gone: nothing to stop
            logger.warning("could not tell the TP followers to stop", exc_info=True)


def _min_over_ranks(group: Any, value: int) -> int:
    """The minimum of ``value`` over the ranks (a collective: every rank calls it)."""
    if group.size == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([int(value)], dtype=torch.int64)
    if group.backend == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=group.group)
    return int(t.item())


def agree_max_total_tokens(group: Any, tokens: int) -> int:
    """The minimum over the ranks of the KV tokens each rank's pool can hold."""
    return _min_over_ranks(group, tokens)


def agree(group: Any, ok: bool) -> bool:
    """True when ``ok`` holds on every rank (a collective: every rank calls it)."""
    return bool(_min_over_ranks(group, int(ok)))


def follow_lora(lora: LoraManager | None, group: Any, msg: StepMessage) -> None:
    """A follower's side of rank 0's "load_lora" / "unload_lora" / "drop_lora"."""
    if msg.kind == "load_lora":
        ok = False
        try:
            if lora is None:
                raise RuntimeError("this rank serves no LoRA adapters")
            lora.load(msg.lora_name, msg.lora_path, load_id=msg.lora_ids[0])
            ok = True
        except Exception as exc:  # noqa: BLE001 (reported to rank 0 through the agreement)
            logger.error("TP rank %d: LoRA adapter '%s' not loaded: %s", group.rank,
                         msg.lora_name, exc)
        if not agree(group, ok) and ok and lora is not None:
            lora.discard(msg.lora_name)  # another rank failed: every rank forgets it
    elif lora is None:
        logger.error("TP rank %d: %s without --enable-lora", group.rank, msg.kind)
    elif msg.kind == "unload_lora":
        try:
            lora.unload(msg.lora_name)
        except ValueError as exc:
            logger.error("TP rank %d: LoRA unload: %s", group.rank, exc)
    else:
        lora.drop_retired(msg.lora_ids)


def apply_embed_overrides(embeds: torch.Tensor,
                          overrides: list[tuple[int, torch.Tensor]] | None) -> torch.Tensor:
    for lo, rows in overrides or []:
        embeds[lo:lo + rows.shape[0]] = rows.to(device=embeds.device, dtype=embeds.dtype)
    return embeds


def run_step(runner: Any, msg: StepMessage, lora: LoraManager | None = None) -> Any:
    """A follower's forward pass of rank 0's step (the same collectives, in the same order),
    with rank 0's adapters in the same slots of ``lora``'s pool."""
    from sglang.srt.model_executor.forward_batch import ForwardBatch

    device = torch.device(runner.device)
    batch = ForwardBatch.from_plan(msg, torch.from_numpy(msg.table), device,
                                   logits_rows=msg.logits_rows, capture_hidden=msg.capture_hidden)
    if msg.embed_overrides:  # input_embeds rows, and image rows from rank 0's vision tower
        with torch.inference_mode():
            embeds = runner.embed_tokens(batch.input_ids)
            batch.input_embeds = apply_embed_overrides(embeds, msg.embed_overrides)
    if msg.mrope_positions is not None:
        batch.mrope_positions = torch.from_numpy(msg.mrope_positions).to(device)
    if msg.lora is None:
        return runner.forward(batch)
    if lora is None:
        raise RuntimeError("rank 0 sent a LoRA step to a rank without --enable-lora")
    batch.lora = lora.mirror(msg.lora)
    try:
        return runner.forward(batch)
    finally:
        lora.end()


def follower_max_total_tokens(args: Any, runner: Any) -> int:
    from sglang.srt.managers.engine_core import local_max_total_tokens

    return local_max_total_tokens(args, runner)


def run_tp_follower(server_args: Any, tp_rank: int, dist_init_method: str,
                    dp_rank: int | None = None) -> None:
    """A rank > 0 (of replica ``dp_rank`` with --dp-size > 1): builds its ModelRunner, agrees
    on the KV pool, then runs rank 0's steps until ``stop``. Any error (a collective failing:
    rank 0 or another rank died) ends the process."""
    from sglang.srt.managers.engine_process import _die_with_parent, place_rank_process

    _die_with_parent()
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replica = "" if dp_rank is None else f" dp{dp_rank}"
    logging.basicConfig(
        level=getattr(logging, server_args.log_level.upper(), logging.INFO),
        format=f"[%(asctime)s engine{replica} tp{tp_rank}] %(message)s")
    try:
        place_rank_process(server_args, dp_rank)
        from sglang.srt.model_executor.model_runner import ModelRunner

        runner = ModelRunner.from_server_args(server_args, tp_rank=tp_rank,
                                              dist_init_method=dist_init_method,
                                              dist_timeout_s=TP_TIMEOUT_S)
        group = runner.tp_group
        lora = None
        if server_args.enable_lora:  # this rank's shard of the adapters (before the KV sizing)
            from sglang.srt.lora.manager import LoraManager

            lora = LoraManager.from_server_args(runner, server_args)
        agree_max_total_tokens(group, follower_max_total_tokens(server_args, runner))
        runner.init_kv_pool(group.broadcast_object(None, src=0))
        logger.info("TP rank %d ready", tp_rank)
        steps = 0
        while True:
            try:
                msg: StepMessage = group.broadcast_object(None, src=0)
            except Exception as exc:  # noqa: BLE001 (rank 0 ended, or the group timed out)
                logger.warning("TP rank %d: lost rank 0 (%s); exiting", tp_rank,
                               str(exc).splitlines()[0][:200])
                os._exit(1)
            if msg.kind == "step":
                run_step(runner, msg, lora)
                steps += 1
            elif msg.kind in ("load_lora", "unload_lora", "drop_lora"):
                follow_lora(lora, group, msg)
            elif msg.kind == "update_weights":
                ok, message = runner.update_weights_from_disk(msg.model_path, msg.load_format)
                if not ok:
                    logger.error("TP rank %d: weight update failed: %s", tp_rank, message)
            elif msg.kind == "stop":
                logger.info("TP rank %d stops after %d steps", tp_rank, steps)
                break
    except Exception:  # noqa: BLE001 (any failure ends the rank, logged)
        logger.error("TP rank %d failed:\n%s", tp_rank, traceback.format_exc())
        os._exit(1)
    os._exit(0)
