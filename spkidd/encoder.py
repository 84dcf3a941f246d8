"""The pretrained GE2E speaker encoder (resemblyzer 0.1.4's weights), run as a stream in staggered windows.

The network (40 mel-power bands -> LSTM 3 x 256 -> Linear -> ReLU -> unit length) was trained on 1.6-s pieces that
start from a zero state; carried across a change of speaker or over long audio its state describes nobody
(PRETRAINED.md: 98% top-1 from a zero state, 45% after 2 s of another voice). So it runs in `windows` staggered
windows of `window_frames` frames, each restarted from zero in turn, and every frame's embedding comes from the
oldest open window: it always describes the last one to two seconds of speech, and a new voice takes over within
one window even inside one utterance. Two windows of 2 s (a restart every second) measured best on P2: 97.0%
top-1 at 2 s against 93.5% for 1.6-s windows, whose oldest window there has seen only 1.2 s.

Loudness is normalized causally, as resemblyzer normalizes a file to -30 dBFS before embedding it (only ever
raising the level): each frame's mel power is scaled by the gain that brings the utterance's mean square so far to
the target. The same `step()` serves streaming chunk by chunk and offline whole sequences, so both give the same
numbers.

On a CPU with native bfloat16 arithmetic (AMX or AVX512-BF16) the LSTM runs in bfloat16: 2.4-3.7 times faster
there, and the development split's figures moved by up to three of 193 windows either way (see GE2E.run_lstm).
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from spkidd.denoise import NoiseFloor, subtract_floor
from spkidd.features import FeatureParams

GE2E_FEATURES = FeatureParams(kind="melpower", mel_scale="slaney", fmin=0.0, fmax=8000.0)
"""What the GE2E encoder was trained on: librosa's Slaney mel power, 40 bands, 0-8 kHz, 25-ms window, 10-ms hop."""
MEL_BANDS = 40
HIDDEN = 256
LAYERS = 3
TARGET_MEAN_SQUARE = 10.0 ** (-30.0 / 10.0)
MAX_POWER_GAIN = 10.0 ** (40.0 / 10.0)
"""At most +40 dB: silence that slipped through the gate is not blown up into noise."""

WEIGHT_NAMES = tuple(
    [f"lstm.{kind}_l{layer}" for layer in range(LAYERS) for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    + ["linear.weight", "linear.bias"]
)


@dataclass
class EncoderState:
    """Per stream (batch rows b): every window's LSTM state, rows b * windows + j; frames seen; the running sum
    of frame mean squares (for the loudness gain); the noise floor."""

    h: torch.Tensor
    c: torch.Tensor
    frames: torch.Tensor
    mean_square_sum: torch.Tensor
    noise: NoiseFloor


def native_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes in bfloat16 natively (x86 AMX or AVX512-BF16). Elsewhere (a Raspberry Pi, older
    x86) bfloat16 would be emulated and slower than float32, so the encoder stays in float32 there."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    flags = {word for line in text.splitlines() if line.startswith("flags") for word in line.split()}
    return bool(flags & {"amx_bf16", "avx512_bf16"})


LSTMState = tuple[torch.Tensor, torch.Tensor]


class GE2E(nn.Module):
    """The network with resemblyzer's parameter names, so its tensors load as they are. `bfloat16`: run the LSTM
    in bfloat16 (None: where the CPU does it natively, native_bfloat16)."""

    def __init__(self, bfloat16: bool | None = None) -> None:
        super().__init__()
        self.lstm = nn.LSTM(MEL_BANDS, HIDDEN, num_layers=LAYERS, batch_first=True)
        self.linear = nn.Linear(HIDDEN, HIDDEN)
        self.in_bfloat16 = native_bfloat16() if bfloat16 is None else bfloat16
        self._bfloat16_lstm: list[nn.LSTM] = []
        self.register_load_state_dict_post_hook(lambda module, _keys: module._bfloat16_lstm.clear())

    def embed(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.normalize(torch.relu(self.linear(hidden)), dim=-1)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        """(B, T, 40) mel power from a zero state -> (B, 256) embedding of the last frame (resemblyzer's forward)."""
        zeros = mels.new_zeros(LAYERS, mels.shape[0], HIDDEN)
        hidden, _ = self.run_lstm(mels, (zeros, zeros))
        return self.embed(hidden[:, -1])

    def run_lstm(self, x: torch.Tensor, state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
        """The LSTM, in bfloat16 if so chosen, with float32 in and out. In bfloat16 it is 2.4 (one stream) to 3.7
        (training's long batches) times faster on AMX (T1: 216-251 streams per core against 148-152 in float32, run
        in turn), and its state holds bfloat16 values exactly, so a stream cut into chunks still gives the numbers
        of one pass. The pretrained weights are the same; the copy is never trained (the LSTM is frozen) and is
        made again when weights are loaded."""
        if not self.in_bfloat16:
            return self.lstm(x, state)
        if not self._bfloat16_lstm:
            self._bfloat16_lstm.append(copy.deepcopy(self.lstm).to(torch.bfloat16).requires_grad_(False))
        h, c = state
        out, (h, c) = self._bfloat16_lstm[0](x.bfloat16(), (h.bfloat16(), c.bfloat16()))
        return out.float(), (h.float(), c.float())


class RollingEncoder(nn.Module):
    """GE2E in `windows` staggered windows of `window_frames` frames; per-frame embeddings of the oldest window."""

    def __init__(
        self, window_frames: int = 200, windows: int = 2, denoise: bool = False, bfloat16: bool | None = None
    ) -> None:
        super().__init__()
        if windows < 1 or window_frames % windows:
            raise ValueError("window_frames must be a multiple of the number of windows")
        self.net = GE2E(bfloat16)
        self.window_frames = window_frames
        self.windows = windows
        self.restart_every = window_frames // windows
        self.denoise = denoise

    def initial_state(self, batch: int = 1) -> EncoderState:
        rows = batch * self.windows
        return EncoderState(
            h=torch.zeros(LAYERS, rows, HIDDEN),
            c=torch.zeros(LAYERS, rows, HIDDEN),
            frames=torch.zeros(batch, dtype=torch.long),
            mean_square_sum=torch.zeros(batch, dtype=torch.float64),
            noise=NoiseFloor.initial(batch, MEL_BANDS),
        )

    def _normalized_mels(
        self, frames: torch.Tensor, state: EncoderState
    ) -> tuple[torch.Tensor, torch.Tensor, NoiseFloor]:
        """Mel power without the noise floor (spkidd.denoise) and with the causal loudness gain applied; the new
        running sum of mean squares (of what is left after the floor) and the new noise floor."""
        n = frames.shape[1]
        mels, mean_square, noise = frames[..., :MEL_BANDS], frames[..., MEL_BANDS].double(), state.noise
        if self.denoise:
            cleaned, noise = subtract_floor(mels, state.frames, state.noise)
            kept = cleaned.sum(dim=-1) / torch.clamp(mels.sum(dim=-1), min=1e-12)
            mels, mean_square = cleaned, mean_square * kept.double()
        running = state.mean_square_sum[:, None] + torch.cumsum(mean_square, dim=1)
        seen = state.frames[:, None] + torch.arange(1, n + 1)
        gain = torch.clamp(TARGET_MEAN_SQUARE / torch.clamp(running / seen, min=1e-12), 1.0, MAX_POWER_GAIN)
        return mels * gain.float()[..., None], running[:, -1], noise

    def window_ages(self, frames_before: torch.Tensor, n: int) -> torch.Tensor:
        """(B, windows, n): frames each window has seen after each new frame (0 = not started yet)."""
        index = frames_before[:, None, None] + torch.arange(n)[None, None, :]
        offset = (torch.arange(self.windows) * self.restart_every)[None, :, None]
        since = index - offset
        return torch.where(since >= 0, since % self.window_frames + 1, torch.zeros_like(since))

    def step(self, frames: torch.Tensor, state: EncoderState) -> tuple[torch.Tensor, EncoderState]:
        """(B, n, 41) new feature frames -> (B, n, 256) frame embeddings and the new state."""
        hidden, new_state = self.hidden_step(frames, state)
        return self.net.embed(hidden), new_state

    def hidden_step(self, frames: torch.Tensor, state: EncoderState) -> tuple[torch.Tensor, EncoderState]:
        """The LSTM output of the oldest window at each frame, before the top layer: what training stores when the
        top layer is tuned too."""
        b, n, _ = frames.shape
        w = self.windows
        mels, mean_square_sum, noise = self._normalized_mels(frames, state)
        ages = self.window_ages(state.frames, n)
        restarts = (ages == 1).reshape(b * w, n)
        x = mels.repeat_interleave(w, dim=0)
        cuts = sorted({0, n, *torch.nonzero(restarts.any(dim=0)).flatten().tolist()})
        started = (ages > 0).reshape(b * w, n)
        h, c = state.h, state.c
        outputs = []
        for start, end in itertools.pairwise(cuts):
            keep = (~restarts[:, start]).to(h.dtype)[None, :, None]
            h, c = h * keep, c * keep
            out, (h, c) = self._run_started(x[:, start:end], h, c, started[:, start])
            outputs.append(out)
        hidden = torch.cat(outputs, dim=1).reshape(b, w, n, HIDDEN)
        oldest = ages.argmax(dim=1)
        chosen = hidden.gather(1, oldest[:, None, :, None].expand(b, 1, n, HIDDEN))[:, 0]
        new_state = EncoderState(h=h, c=c, frames=state.frames + n, mean_square_sum=mean_square_sum, noise=noise)
        return chosen, new_state

    def _run_started(
        self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, started: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The LSTM over one stretch between restarts, for the rows whose window has started (the first window of
        every stream starts at its first frame, so there is always one). A window that has not started yet is
        never the oldest and is zeroed when it starts, so its rows are left at zero: in the first `restart_every`
        frames of every utterance only one window of each stream is computed (a third of the work for an
        utterance of 1.5 s, and a household's last one to three seconds)."""
        if bool(started.all()):
            return self.net.run_lstm(x, (h, c))
        rows = torch.nonzero(started).flatten()
        out = x.new_zeros(x.shape[0], x.shape[1], HIDDEN)
        new_h, new_c = torch.zeros_like(h), torch.zeros_like(c)
        computed, (h_rows, c_rows) = self.net.run_lstm(x[rows], (h[:, rows], c[:, rows]))
        out[rows], new_h[:, rows], new_c[:, rows] = computed, h_rows, c_rows
        return out, (new_h, new_c)

    def batch_states(self, states: list[EncoderState]) -> EncoderState:
        return EncoderState(
            h=torch.cat([s.h for s in states], dim=1),
            c=torch.cat([s.c for s in states], dim=1),
            frames=torch.cat([s.frames for s in states]),
            mean_square_sum=torch.cat([s.mean_square_sum for s in states]),
            noise=NoiseFloor.batch([s.noise for s in states]),
        )

    def unbatch_state(self, state: EncoderState) -> list[EncoderState]:
        w = self.windows
        return [
            EncoderState(
                h=state.h[:, i * w : (i + 1) * w],
                c=state.c[:, i * w : (i + 1) * w],
                frames=state.frames[i : i + 1],
                mean_square_sum=state.mean_square_sum[i : i + 1],
                noise=state.noise.row(i),
            )
            for i in range(state.frames.shape[0])
        ]
