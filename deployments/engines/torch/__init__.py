"""The PyTorch engine: transformers' Whisper with SDPA attention, our own batched decoding."""
