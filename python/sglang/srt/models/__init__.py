"""Model architectures (torch), looked up by HF architecture name in ``registry``."""
