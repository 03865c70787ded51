"""The backend interface the interpreter calls; hooks default to doing nothing."""

from __future__ import annotations

from typing import Any

from sglang.lang.chat_template import ChatTemplate, get_chat_template


class BaseBackend:
    """What ``StreamExecutor`` needs from a backend. Subclasses implement ``generate`` etc."""

    def __init__(self) -> None:
        self.support_concate_and_append = False
        self.chat_template: ChatTemplate = get_chat_template("default")

    def get_model_name(self) -> str:
        raise NotImplementedError()

    def get_chat_template(self) -> ChatTemplate:
        return self.chat_template

    # Hooks around a program's life; nothing to do for stateless backends.
    def cache_prefix(self, prefix_str: str) -> None:
        pass

    def uncache_prefix(self, rid: str) -> None:
        pass

    def end_request(self, rid: str | list[str]) -> None:
        pass

    def begin_program(self, s: Any) -> None:
        pass

    def end_program(self, s: Any | list[Any]) -> None:
        pass

    def commit_lazy_operations(self, s: Any) -> None:
        pass

    def fork_program(self, src: Any, dst: list[Any], position_ids_offset: Any = None) -> None:
        pass

    def fill_image(self, s: Any) -> None:
        pass

    def generate(self, s: Any, sampling_params: Any) -> tuple[Any, dict]:
        raise NotImplementedError()

    def generate_stream(self, s: Any, sampling_params: Any):
        raise NotImplementedError()

    def select(self, s: Any, choices: list[str], temperature: float, choices_method: Any):
        raise NotImplementedError()

    def concatenate_and_append(self, src_rids: list[str], dst_rid: str) -> None:
        raise NotImplementedError()

    def shutdown(self) -> None:
        pass

    def flush_cache(self) -> Any:
        pass

    def get_server_info(self) -> Any:
        pass
