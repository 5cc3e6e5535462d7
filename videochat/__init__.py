"""videochat: video-chat instruction tuning (ViCLIP -> Q-Former -> LLM with LoRA)."""

__version__ = "0.1.0"
