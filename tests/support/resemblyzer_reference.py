"""Runs inside a throwaway venv that has resemblyzer 0.1.4 (and librosa): the package's own numbers for our test.

Reads IN.npy (a float32 waveform at 16 kHz), writes OUT_DIR/{filterbank,mels,embedding,partial}.npy: librosa's
mel filterbank as resemblyzer uses it, the package's mel frames of the waveform, the package's embedding of those
frames (VoiceEncoder.forward on one 160-frame partial) and its embed_utterance of the waveform.
"""

import sys
from pathlib import Path

import librosa
import numpy as np
import torch
from resemblyzer import VoiceEncoder, audio, hparams

wav = np.load(sys.argv[1])
out = Path(sys.argv[2])
np.save(out / "filterbank.npy", librosa.filters.mel(sr=16000, n_fft=400, n_mels=hparams.mel_n_channels).T)
mels = audio.wav_to_mel_spectrogram(wav)
np.save(out / "mels.npy", mels)
encoder = VoiceEncoder("cpu", verbose=False)
with torch.no_grad():
    embedding = encoder(torch.from_numpy(mels[None, :160]).float())[0].numpy()
np.save(out / "embedding.npy", embedding)
