"""Role prefixes and suffixes of the frontend language (``sgl.user(...)`` etc.).

The frontend renders roles as text as it goes (a program appends to its prompt turn by turn), so a
template here is a table of (prefix, suffix) per role, not the Jinja template the server's chat
route renders whole conversations with. The registry is keyed by name; a backend picks a template
by ``get_chat_template_by_model_path`` (first matching function wins, else ``default``), and a
server whose model path tells nothing by the model's architecture
(``get_chat_template_by_architecture``: vision-language models, whose ``image_token`` must be the
model's image placeholder).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto


class ChatTemplateStyle(Enum):
    PLAIN = auto()
    LLAMA2 = auto()


@dataclass
class ChatTemplate:
    name: str
    default_system_prompt: str | None
    role_prefix_and_suffix: dict[str, tuple[str, str]]
    stop_str: tuple[str, ...] = ()
    image_token: str = "<image>"
    audio_token: str = "<audio>"
    style: ChatTemplateStyle = ChatTemplateStyle.PLAIN

    def get_prefix_and_suffix(self, role: str, hist_messages: list[dict]) -> tuple[str, str]:
        """The text around a ``role`` turn that follows ``hist_messages``."""
        prefix, suffix = self.role_prefix_and_suffix.get(role, ("", ""))
        if self.style == ChatTemplateStyle.LLAMA2:
            if role == "system" and not hist_messages:
                user_prefix, _ = self.role_prefix_and_suffix.get("user", ("", ""))
                return user_prefix + prefix, suffix
            if (role == "user" and len(hist_messages) == 1
                    and hist_messages[0]["content"] is not None):
                return "", suffix
        return prefix, suffix

    def get_prompt(self, messages: list[dict]) -> str:
        """A whole conversation as text (a system turn with content None gets the default)."""
        prompt = ""
        for i, message in enumerate(messages):
            role, content = message["role"], message["content"]
            if role == "system" and content is None:
                content = self.default_system_prompt
                if content is None:
                    continue
            prefix, suffix = self.get_prefix_and_suffix(role, messages[:i])
            prompt += f"{prefix}{content}{suffix}"
        return prompt


chat_template_registry: dict[str, ChatTemplate] = {}
matching_function_registry: list[Callable[[str], str | None]] = []


def register_chat_template(template: ChatTemplate) -> None:
    chat_template_registry[template.name] = template


def register_chat_template_matching_function(func: Callable[[str], str | None]):
    matching_function_registry.append(func)
    return func


def get_chat_template(name: str) -> ChatTemplate:
    return chat_template_registry[name]


def get_chat_template_by_model_path(model_path: str) -> ChatTemplate:
    for matcher in matching_function_registry:
        name = matcher(model_path)
        if name is not None:
            return get_chat_template(name)
    return get_chat_template("default")


# Vision-language architectures (the server's ``/model_info``) -> their template.
ARCHITECTURE_TEMPLATES = {
    "Qwen2VLForConditionalGeneration": "qwen2-vl",
    "Qwen2_5_VLForConditionalGeneration": "qwen2-vl",
    "LlavaOnevisionForConditionalGeneration": "chatml-llava",
}


def get_chat_template_by_architecture(architectures: list[str] | None) -> ChatTemplate | None:
    """The template of the first architecture that has one; None when none has."""
    for architecture in architectures or ():
        if architecture in ARCHITECTURE_TEMPLATES:
            return get_chat_template(ARCHITECTURE_TEMPLATES[architecture])
    return None


def _roles(system: tuple[str, str], user: tuple[str, str],
           assistant: tuple[str, str]) -> dict[str, tuple[str, str]]:
    return {"system": system, "user": user, "assistant": assistant}


def _same_roles(begin: Callable[[str], str], end: str) -> dict[str, tuple[str, str]]:
    return {role: (begin(role), end) for role in ("system", "user", "assistant")}


_CHATML = _same_roles(lambda r: f"<|im_start|>{r}\n", "<|im_end|>\n")
_LLAMA3 = _same_roles(lambda r: f"<|start_header_id|>{r}<|end_header_id|>\n\n", "<|eot_id|>")
_HELPFUL = "You are a helpful assistant."


@dataclass
class _T:
    """Registration shorthand: the fields of ChatTemplate with keyword defaults."""

    name: str
    roles: dict[str, tuple[str, str]]
    system: str | None = None
    stop: tuple[str, ...] = ()
    image: str = "<image>"
    style: ChatTemplateStyle = ChatTemplateStyle.PLAIN

    def register(self) -> None:
        register_chat_template(ChatTemplate(
            name=self.name, default_system_prompt=self.system, role_prefix_and_suffix=self.roles,
            stop_str=self.stop, image_token=self.image, style=self.style))


for _t in (
    _T("default", _roles(("SYSTEM:", "\n"), ("USER:", "\n"), ("ASSISTANT:", "\n"))),
    _T("claude", _roles(("", ""), ("\n\nHuman: ", ""), ("\n\nAssistant:", ""))),
    _T("chatml", _CHATML, stop=("<|im_end|>",)),
    _T("chatml-llava", _CHATML, system=_HELPFUL, stop=("<|im_end|>",), image="<image>\n"),
    _T("qwen", _CHATML, system=_HELPFUL, stop=("<|im_end|>",)),
    _T("qwen2-vl", _CHATML, system=_HELPFUL, stop=("<|im_end|>",),
       image="<|vision_start|><|image_pad|><|vision_end|>"),
    # SmolLM2's own template: ChatML with its default system prompt (the demo model).
    _T("smollm", _CHATML, stop=("<|im_end|>",),
       system="You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
    _T("vicuna_v1.1", _roles(("", " "), ("USER:", " "), ("ASSISTANT:", "</s>")),
       system=("A chat between a curious human and an artificial intelligence assistant. "
               "The assistant gives helpful, detailed, and polite answers to the human's "
               "questions."), image=" <image>\n"),
    _T("llama-2-chat", _roles(("<<SYS>>\n", "\n<</SYS>>\n\n"), ("[INST] ", " [/INST]"),
                              ("", " </s><s>")), style=ChatTemplateStyle.LLAMA2),
    _T("mistral", _roles(("[SYSTEM_PROMPT] ", " [/SYSTEM_PROMPT]"), ("[INST] ", " [/INST]"),
                         ("", " </s><s>")), stop=("</s>",), image="[IMG]"),
    _T("llama-3-instruct", _LLAMA3, stop=("<|eot_id|>",), image="<|image|>"),
    _T("llama-3-instruct-llava", _LLAMA3, stop=("<|eot_id|>",), image="<image>\n"),
    _T("llama-4", _same_roles(lambda r: f"<|header_start|>{r}<|header_end|>\n\n", "<|eot|>"),
       stop=("<|eot|>",), image="<|image|>"),
    _T("deepseek-v3", _roles(("", ""), ("<｜User｜>", ""),
                             ("<｜Assistant｜>", "<｜end▁of▁sentence｜>")),
       stop=("<｜end▁of▁sentence｜>",)),
    _T("gemma-it", _roles(("", ""), ("<start_of_turn>user\n", "<end_of_turn>\n"),
                          ("<start_of_turn>model\n", "<end_of_turn>\n")),
       stop=("<end_of_turn>",), image="<start_of_image>"),
    _T("gemma-4-it", _roles(("<|turn>system\n", "<turn|>\n"), ("<|turn>user\n", "<turn|>\n"),
                            ("<|turn>model\n", "<turn|>\n")), stop=("<turn|>",)),
    _T("yi-1.5", _roles(("", ""), ("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"),
                        ("", "<|im_end|>\n")), stop=("<|im_end|>",)),
    _T("yi-vl", _roles(("", "\n\n"), ("### Human:", "\n"), ("### Assistant:", "\n")),
       system=("This is a chat between an inquisitive human and an AI assistant. Assume the "
               "role of the AI assistant. Read all the images carefully, and respond to the "
               "human's questions with informative, helpful, detailed and polite answers."),
       image=" <image_placeholder>\n"),
    _T("dbrx-instruct", _CHATML, stop=("<|im_end|>",),
       system="You are DBRX, created by Databricks. You were last updated in December 2023."),
    _T("c4ai-command-r", _same_roles(
        lambda r: "<|START_OF_TURN_TOKEN|>"
        + {"system": "<|SYSTEM_TOKEN|>", "user": "<|USER_TOKEN|>",
           "assistant": "<|CHATBOT_TOKEN|>"}[r], "<|END_OF_TURN_TOKEN|>")),
    _T("granite-3-instruct", _same_roles(
        lambda r: f"<|start_of_role|>{r}<|end_of_role|>", "<|end_of_text|>"),
       stop=("<|end_of_text|>",)),
    _T("minicpmv", _roles(("", " "), ("user:", " "), ("assistant:", "</s>")),
       stop=("<|im_end|>", "<|endoftext|>"), image="(<image>./</image>)"),
    _T("minicpmo", _roles(("", " "), ("user:", " "), ("assistant:", "</s>")),
       stop=("<|im_end|>", "<|endoftext|>"), image="(<image>./</image>)"),
    _T("janus", _roles(("", ""), ("<|User|>", ""), ("<|Assistant|>", "<｜end▁of▁sentence｜>")),
       stop=("<｜end▁of▁sentence｜>",), image="<image_placeholder>\n"),
    _T("janus-pro", _roles(("", ""), ("<|User|>", ""), ("<|Assistant|>", "<｜end▁of▁sentence｜>")),
       stop=("<｜end▁of▁sentence｜>",), image="<image_placeholder>\n"),
    _T("internvl-2-5", _CHATML, stop=("<|im_end|>", "<|action_end|>"), image="<image>",
       system="你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"),
    _T("interns1", _CHATML, stop=("<|im_end|>", "<|action_end|>"), image="<image>"),
    _T("glm-4v", _roles(("<|system|>\n", ""), ("<|user|>\n", ""), ("<|assistant|>\n", "")),
       stop=("<|user|>", "<|endoftext|>", "<|observation|>"),
       image="<|begin_of_image|><|image|><|end_of_image|>"),
):
    _t.register()


def _search(pattern: str, path: str) -> bool:
    return re.search(pattern, path, re.IGNORECASE) is not None


@register_chat_template_matching_function
def match_deepseek(path: str) -> str | None:
    if _search(r"deepseek-(v3|r1)", path) and not _search("base", path):
        return "deepseek-v3"
    return None


@register_chat_template_matching_function
def match_orion(path: str) -> str | None:
    return "claude" if _search("orion", path) else None


@register_chat_template_matching_function
def match_janus(path: str) -> str | None:
    return "janus-pro" if _search("janus", path) else None


@register_chat_template_matching_function
def match_dbrx(path: str) -> str | None:
    return "dbrx-instruct" if _search("dbrx", path) and _search("instruct", path) else None


@register_chat_template_matching_function
def match_vicuna(path: str) -> str | None:
    return "vicuna_v1.1" if _search(r"vicuna|llava-v1\.5", path) else None


@register_chat_template_matching_function
def match_llama2_chat(path: str) -> str | None:
    return "llama-2-chat" if _search(r"llama-2.*chat|codellama.*instruct", path) else None


@register_chat_template_matching_function
def match_mistral(path: str) -> str | None:
    return "mistral" if _search(r"pixtral|(mistral|mixtral).*instruct", path) else None


@register_chat_template_matching_function
def match_llama3_instruct(path: str) -> str | None:
    return "llama-3-instruct" if _search(r"llama-3.*instruct", path) else None


@register_chat_template_matching_function
def match_chat_ml(path: str) -> str | None:
    if _search("tinyllama", path):
        return "chatml"
    if _search(r"qwen.*vl", path):
        return "qwen2-vl"
    if _search("glm-4v", path):
        return "glm-4v"
    if _search(r"qwen.*(chat|instruct)", path) and not _search("llava", path):
        return "qwen"
    if _search(r"llava-v1\.6-34b|llava-v1\.6-yi-34b|llava-next-video-34b|llava-onevision-qwen2",
               path):
        return "chatml-llava"
    return None


@register_chat_template_matching_function
def match_yi(path: str) -> str | None:
    if _search("yi-vl", path) and not _search("llava", path):
        return "yi-vl"
    if _search(r"yi-1\.5.*chat", path):
        return "yi-1.5"
    return None


@register_chat_template_matching_function
def match_gemma_it(path: str) -> str | None:
    if _search(r"gemma-4.*it", path):
        return "gemma-4-it"
    if _search(r"gemma.*it", path) or _search("gemma-3", path):
        return "gemma-it"
    return None


@register_chat_template_matching_function
def match_others(path: str) -> str | None:
    if _search("minicpm-v", path):
        return "minicpmv"
    if _search("minicpm-o", path):
        return "minicpmo"
    if _search("c4ai-command-r", path):
        return "c4ai-command-r"
    if _search(r"granite.*instruct", path):
        return "granite-3-instruct"
    if _search("internvl2_5", path):
        return "internvl-2-5"
    if _search("intern-s1", path):
        return "interns1"
    return None


@register_chat_template_matching_function
def match_smollm(path: str) -> str | None:
    """This project's demo model (SmolLM2 instruct GGUF or HF folder)."""
    return "smollm" if _search(r"smollm.*instruct", path) else None
