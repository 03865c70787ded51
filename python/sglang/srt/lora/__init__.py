"""LoRA adapters (issue 15, building blocks not served yet): PEFT adapter folders
(``adapter``), the fixed-size pool of adapter slots with LRU eviction (``pool``) and the
per-segment LoRA delta of a batch mixing adapters (``ops``)."""
