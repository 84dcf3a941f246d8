"""Audio in: file decoding and the live sources (microphone, ffmpeg-pulled streams, paced replay)."""
