"""Test helpers shipped with the package (SGLang's docs import sglang.test.doc_patch)."""
