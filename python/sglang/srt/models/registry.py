"""Architecture name (``architectures[0]`` of the HF config) -> model class."""

from __future__ import annotations

from torch import nn

from sglang.srt.models.base_models import LlamaBaseModel, Qwen2BaseModel, Qwen3BaseModel
from sglang.srt.models.bert import BertModel, XLMRobertaModel
from sglang.srt.models.cross_encoder import (
    BertForSequenceClassification,
    XLMRobertaForSequenceClassification,
)
from sglang.srt.models.llama import LlamaForCausalLM
from sglang.srt.models.llava_onevision import LlavaOnevisionForConditionalGeneration
from sglang.srt.models.qwen2 import Qwen2ForCausalLM
from sglang.srt.models.qwen2_moe import Qwen2MoeForCausalLM
from sglang.srt.models.qwen2_vl import (
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
)
from sglang.srt.models.qwen3 import Qwen3ForCausalLM
from sglang.srt.models.qwen3_moe import Qwen3MoeForCausalLM
from sglang.srt.models.sequence_classification import (
    LlamaForSequenceClassification,
    Qwen2ForSequenceClassification,
)

MODEL_REGISTRY: dict[str, type[nn.Module]] = {
    "BertModel": BertModel,
    "BertForSequenceClassification": BertForSequenceClassification,
    "XLMRobertaModel": XLMRobertaModel,
    "XLMRobertaForSequenceClassification": XLMRobertaForSequenceClassification,
    "RobertaModel": XLMRobertaModel,
    "RobertaForSequenceClassification": XLMRobertaForSequenceClassification,
    "LlamaForCausalLM": LlamaForCausalLM,
    "LlavaOnevisionForConditionalGeneration": LlavaOnevisionForConditionalGeneration,
    "LlamaModel": LlamaBaseModel,
    "Qwen2Model": Qwen2BaseModel,
    "Qwen3Model": Qwen3BaseModel,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
    "Qwen2MoeForCausalLM": Qwen2MoeForCausalLM,
    "Qwen2VLForConditionalGeneration": Qwen2VLForConditionalGeneration,
    "Qwen2_5_VLForConditionalGeneration": Qwen2_5_VLForConditionalGeneration,
    "Qwen3MoeForCausalLM": Qwen3MoeForCausalLM,
    "LlamaForSequenceClassification": LlamaForSequenceClassification,
    "Qwen2ForSequenceClassification": Qwen2ForSequenceClassification,
}


def supported_architectures() -> list[str]:
    return sorted(MODEL_REGISTRY)


def get_model_class(architecture: str) -> type[nn.Module]:
    """The class implementing ``architecture``; ValueError listing the supported ones if none."""
    try:
        return MODEL_REGISTRY[architecture]
    except KeyError:
        supported = ", ".join(supported_architectures())
        raise ValueError(
            f"Model architecture '{architecture}' is not supported. Supported: {supported}"
        ) from None
