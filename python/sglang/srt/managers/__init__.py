"""Request managers: tokenizer manager (HTTP side), engine core and process, messages."""
