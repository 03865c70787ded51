"""The offline engine, ``sgl.Engine(model_path=...)``: the server's engine without HTTP.

It owns a ``TokenizerManager`` (which starts the engine process) running on a private event loop in
a background thread; the synchronous methods submit coroutines to that loop and wait, the async
ones await them from the caller's loop. Replies have the ``/generate`` shape.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from typing import Any

from sglang.srt.managers.io_struct import (
    EmbeddingReqInput,
    GenerateReqInput,
    LoraAdapterResp,
    UpdateWeightFromDiskReqInput,
)
from sglang.srt.managers.tokenizer_manager import ReqState, RequestFailed, TokenizerManager
from sglang.srt.server_args import LOAD_FORMATS, ServerArgs

_END = object()


class Engine:
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("log_level", "error")
        # Offline use has no clients to protect from each other: no queue or batch limit.
        kwargs.setdefault("max_queued_requests", None)
        kwargs.setdefault("max_batch_size", 1 << 30)
        self.server_args = ServerArgs(**kwargs)
        if self.server_args.node_rank > 0:
            raise ValueError("node_rank > 0 runs tensor-parallel ranks only: start it with "
                             "`python -m sglang.launch_server ... --node-rank N`; the Engine "
                             "runs on node 0")
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="sglang-engine-loop")
        self._thread.start()
        try:
            self.tokenizer_manager = TokenizerManager(self.server_args)
        except BaseException:  # the engine failed to start: nothing of it may stay behind
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            raise
        self._call(self._start_loops())
        self._closed = False

    async def _start_loops(self) -> None:
        self.tokenizer_manager.start_loops()

    def _submit(self, coro: Any) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def _call(self, coro: Any) -> Any:
        return self._submit(coro).result()

    # ---- generation ------------------------------------------------------------------------------
    @staticmethod
    def _request(prompt: Any = None, sampling_params: Any = None, input_ids: Any = None,
                 image_data: Any = None, return_logprob: Any = False,
                 logprob_start_len: Any = None, top_logprobs_num: Any = None,
                 token_ids_logprob: Any = None, lora_path: Any = None,
                 custom_logit_processor: Any = None, return_hidden_states: Any = False,
                 stream: bool = False, rid: Any = None, input_embeds: Any = None,
                 return_text_in_logprobs: bool = False) -> GenerateReqInput:
        return GenerateReqInput(
            text=prompt, input_ids=input_ids, input_embeds=input_embeds,
            sampling_params=sampling_params, image_data=image_data,
            return_logprob=return_logprob, logprob_start_len=logprob_start_len,
            top_logprobs_num=top_logprobs_num, token_ids_logprob=token_ids_logprob,
            lora_path=lora_path, custom_logit_processor=custom_logit_processor,
            return_hidden_states=return_hidden_states, stream=stream, rid=rid,
            return_text_in_logprobs=return_text_in_logprobs,
        )

    async def _generate(self, obj: GenerateReqInput) -> Any:
        states, is_list = await self.tokenizer_manager.generate(obj)
        return await self._results(states, is_list, self.tokenizer_manager.response)

    async def _results(self, states: list[ReqState], is_list: bool, reply: Any) -> Any:
        """Waits for every state, then ``reply(state)`` each (one object, or a list)."""
        tm = self.tokenizer_manager
        try:
            for s in states:
                await tm.wait(s)
                s.raise_if_failed()
            results = [reply(s) for s in states]
        finally:
            await self._cleanup(states)
        return results if is_list else results[0]

    async def _cleanup(self, states: list[ReqState]) -> None:
        tm = self.tokenizer_manager
        for s in states:
            if not s.finished:
                await tm.abort_request(s.single.rid)
            tm.release(s)

    async def _stream_into(self, obj: GenerateReqInput, sink: Any) -> None:
        """Pushes the chunks of every item (with "index" for several) into ``sink``."""
        tm = self.tokenizer_manager
        try:
            states, is_list = await tm.generate(obj)
        except Exception as exc:
            sink(exc)
            sink(_END)
            return
        try:
            for s in states:  # items are streamed one after another
                async for chunk in tm.stream(s):
                    if is_list:
                        chunk["index"] = s.single.index
                    sink(chunk)
        except Exception as exc:
            sink(exc)
        finally:
            await self._cleanup(states)
            sink(_END)

    def generate(self, prompt: Any = None, sampling_params: Any = None, **kwargs: Any) -> Any:
        obj = self._request(prompt, sampling_params, **kwargs)
        if obj.stream:
            return self._stream_sync(obj)
        try:
            return self._call(self._generate(obj))
        except RequestFailed as exc:
            raise ValueError(exc.message) from exc

    def _stream_sync(self, obj: GenerateReqInput) -> Iterator[dict[str, Any]]:
        q: queue.Queue = queue.Queue()
        self._submit(self._stream_into(obj, q.put))
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, Exception):
                raise ValueError(str(item)) from item
            yield item

    async def async_generate(self, prompt: Any = None, sampling_params: Any = None,
                             **kwargs: Any) -> Any:
        obj = self._request(prompt, sampling_params, **kwargs)
        if obj.stream:
            return self._stream_async(obj)
        return await asyncio.wrap_future(self._submit(self._generate(obj)))

    async def _stream_async(self, obj: GenerateReqInput) -> AsyncIterator[dict[str, Any]]:
        caller = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        self._submit(self._stream_into(obj, lambda item: caller.call_soon_threadsafe(q.put_nowait,
                                                                                     item)))
        while True:
            item = await q.get()
            if item is _END:
                return
            if isinstance(item, Exception):
                raise ValueError(str(item)) from item
            yield item

    # ---- management ------------------------------------------------------------------------------
    async def _encode(self, obj: EmbeddingReqInput) -> Any:
        tm = self.tokenizer_manager
        states, is_list = await tm.encode(obj)

        def reply(state: ReqState) -> dict[str, Any]:
            out = tm.embedding_response(state)
            if not isinstance(out["embedding"], float):  # plain floats offline, as in SGLang
                out["embedding"] = out["embedding"].tolist()
            return out

        return await self._results(states, is_list, reply)

    def encode(self, prompt: Any = None, image_data: Any = None, dimensions: int | None = None,
               input_ids: Any = None, rid: Any = None) -> Any:
        """Embeddings (an ``is_embedding=True`` engine): ``{"embedding", "meta_info"}`` for one
        input, a list for a list of inputs. ValueError for an invalid request."""
        obj = EmbeddingReqInput(text=prompt, input_ids=input_ids, image_data=image_data,
                                dimensions=dimensions, rid=rid)
        try:
            return self._call(self._encode(obj))
        except RequestFailed as exc:
            raise ValueError(exc.message) from exc

    def rerank(self, prompt: list[list[str]], image_data: Any = None) -> list[dict[str, Any]]:
        """Cross-encoder scores (an ``is_embedding=True`` engine on a cross-encoder) of
        ``[[query, document], ...]``: ``{"embedding": score, "meta_info"}`` per pair, in the
        pairs' order. ValueError for an invalid request."""
        obj = EmbeddingReqInput(text=prompt, image_data=image_data, is_cross_encoder_request=True)
        try:
            return self._call(self._encode(obj))
        except RequestFailed as exc:
            raise ValueError(exc.message) from exc

    def update_weights_from_disk(self, model_path: str, load_format: str | None = None,
                                 **kwargs: Any) -> tuple[bool, str, int]:
        """Swap in another checkpoint of the same model: (success, message,
        num_paused_requests). Other fields of ``/update_weights_from_disk`` (``weight_version``,
        ``abort_all_requests``, ``flush_cache``) go as keyword arguments."""
        obj = UpdateWeightFromDiskReqInput(model_path=model_path, load_format=load_format,
                                           **kwargs)
        try:
            obj.check(LOAD_FORMATS)
        except ValueError as exc:
            return False, str(exc), 0
        return self._call(self.tokenizer_manager.update_weights_from_disk(obj))

    def load_lora_adapter(self, lora_name: str, lora_path: str,
                          pinned: bool = False) -> LoraAdapterResp:
        """Serves the PEFT adapter folder ``lora_path`` as ``lora_name`` (``/load_lora_adapter``);
        the reply has ``success``, ``error_message`` and ``loaded_adapters`` (name -> path)."""
        if pinned:
            return LoraAdapterResp(False, "pinned: adapters cannot be pinned to a slot (not "
                                   "supported).", dict(self.tokenizer_manager.lora_adapters))
        return self._call(self.tokenizer_manager.load_lora_adapter(lora_name, lora_path))

    def unload_lora_adapter(self, lora_name: str) -> LoraAdapterResp:
        return self._call(self.tokenizer_manager.unload_lora_adapter(lora_name))

    def start_expert_distribution_record(self) -> None:
        self._call(self.tokenizer_manager.expert_distribution("start"))

    def stop_expert_distribution_record(self) -> None:
        self._call(self.tokenizer_manager.expert_distribution("stop"))

    def dump_expert_distribution_record(self) -> None:
        """Writes the recorded window to SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR (a .pt file)."""
        self._call(self.tokenizer_manager.expert_distribution("dump"))

    def flush_cache(self) -> bool:
        return self._call(self.tokenizer_manager.flush_cache())

    def get_server_info(self) -> dict[str, Any]:
        return self._call(self.tokenizer_manager.server_info())

    def get_model_info(self) -> dict[str, Any]:
        a = self.server_args
        return {"model_path": a.model_path, "tokenizer_path": a.tokenizer_path,
                "is_generation": not a.is_embedding,
                "preferred_sampling_params": a.preferred_sampling_params_dict,
                "weight_version": a.weight_version,
                "has_image_understanding": self.tokenizer_manager.image_processor is not None,
                "has_audio_understanding": False}

    def shutdown(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        self.tokenizer_manager.shutdown()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __del__(self) -> None:
        try:
            self.shutdown()
        except Exception:
            pass
