"""Model building blocks shared by the architectures in ``sglang.srt.models``."""
