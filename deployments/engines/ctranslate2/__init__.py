"""The CTranslate2 engine (faster-whisper's model loading and features)."""
