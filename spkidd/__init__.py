"""spkidd: streaming, real-time speaker identification for smart homes."""

__version__ = "0.1.0"

SAMPLE_RATE = 16000
"""Every sample inside spkidd is 16 kHz mono; anything else is resampled at the edge."""
