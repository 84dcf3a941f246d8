"""The kept `unknown` clips as the page sees them: listed newest first, grouped by how alike they sound, opened
only by a name the clip keeper itself writes and only inside its folder.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spkidd.audio.decode import AudioDecodeError, load_audio
from spkidd.decide import top_candidates
from spkidd.enrollment import voice_print
from spkidd.modelfile import ModelBundle
from spkidd.unknown_clips import CLIP_NAME, kept_clips
from spkidd.web.control import DaemonControl
from spkidd.web.errors import PageError

log = logging.getLogger(__name__)

SAME_VOICE_SCORE = 0.5
"""Cosine similarity of voice prints above which two clips are shown as one voice. Measured on real speech the
model never trained on (E1's model of 200 LibriSpeech voices; 130 2-s clips of 49 others, cut from their
enrollment audio): at 0.8 no two clips of one voice were grouped; at 0.5, 24 of the 44 voices with several clips
had all of them in one group and 1 clip of 130 joined another voice's group (0.45: 31 voices, 7 clips; 0.55: 19
voices, none). A household has one or two unknown voices at a time, not 49, so mixing is rarer still."""


class ClipError(PageError):
    """A clip name the page cannot use."""


@dataclass(frozen=True)
class ClipInfo:
    name: str
    time: str
    source: str
    audio_s: float
    speech_s: float
    candidates: dict[str, float]
    """The closest speakers of the model as it is now (not the daemon's answer when it kept the clip: the voices
    may have been renamed or forgotten since), with the probabilities the daemon would give the whole clip."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "time": self.time,
            "source": self.source,
            "audio_s": self.audio_s,
            "speech_s": self.speech_s,
            "candidates": self.candidates,
        }


def clip_info(path: Path, candidates: dict[str, float]) -> ClipInfo:
    """A clip with what its JSON sidecar says about it (when and where it was heard, how much speech it holds)."""
    try:
        sidecar = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        sidecar = {}
    if not isinstance(sidecar, dict):
        sidecar = {}
    return ClipInfo(
        name=path.name,
        time=str(sidecar.get("time", "")),
        source=str(sidecar.get("source", "")),
        audio_s=float(sidecar.get("audio_s", 0.0)),
        speech_s=float(sidecar.get("speech_s", 0.0)),
        candidates=candidates,
    )


def group_by_voice(prints: dict[str, np.ndarray | None], names: list[str]) -> list[list[str]]:
    """Clips in groups of one voice (greedy, newest first: a clip joins the first group whose mean voice print is
    alike enough). Clips without speech are each a group of their own."""
    groups: list[tuple[list[str], np.ndarray | None]] = []
    for name in names:
        unit = prints.get(name)
        best, best_score = None, SAME_VOICE_SCORE
        if unit is not None:
            for i, (_, centre) in enumerate(groups):
                if centre is None:
                    continue
                score = float(centre @ unit) / (float(np.linalg.norm(centre)) + 1e-9)
                if score >= best_score:
                    best, best_score = i, score
        if best is None:
            groups.append(([name], None if unit is None else unit.copy()))
        else:
            members, centre = groups[best]
            members.append(name)
            assert centre is not None and unit is not None
            groups[best] = (members, centre + unit)
    return [members for members, _ in groups]


class ClipShelf:
    """The unknown-clips folder of [unknown_clips], as the daemon's configuration says now."""

    def __init__(self, control: DaemonControl) -> None:
        self._control = control
        self._prints: dict[str, np.ndarray | None] = {}
        self._prints_model: ModelBundle | None = None

    @property
    def folder(self) -> Path | None:
        return self._control.clips_folder

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    def newest_first(self) -> list[Path]:
        folder = self.folder
        return [] if folder is None else list(reversed(kept_clips(folder)))

    def path(self, name: str) -> Path:
        """The clip called `name`: only a name of the keeper's own pattern, of a file that is in the folder now."""
        folder = self.folder
        if folder is None:
            raise ClipError("keeping unknown voices is off ([unknown_clips] folder is not set)")
        if not CLIP_NAME.match(name):
            raise ClipError(f"{name!r} is not the name of a kept clip")
        path = folder / name
        if not path.is_file():
            raise ClipError(f"no kept clip {name!r} (it may have been removed to keep the folder's bounds)", status=404)
        return path

    def listing(self, bundle: ModelBundle) -> list[dict[str, Any]]:
        """Blocking (voice prints are model work): groups of clips, each newest first."""
        clips = self.newest_first()
        names = [c.name for c in clips]
        self._update_prints(bundle, clips)
        infos = {c.name: clip_info(c, self._closest(bundle, c.name)).to_dict() for c in clips}
        return [{"clips": [infos[n] for n in group]} for group in group_by_voice(self._prints, names)]

    def audio(self, names: list[str]) -> dict[str, np.ndarray]:
        """Blocking: the clips' audio, by name."""
        if not names:
            raise ClipError("select at least one clip")
        if len(set(names)) != len(names):
            raise ClipError("a clip was selected twice")
        return {name: load_audio(self.path(name)) for name in names}

    def remove(self, names: list[str]) -> None:
        """Blocking: enrolled clips leave the unknown list (with their sidecars)."""
        for name in names:
            try:
                path = self.path(name)
            except ClipError:
                continue
            path.unlink(missing_ok=True)
            path.with_suffix(".json").unlink(missing_ok=True)
            self._prints.pop(name, None)

    def _closest(self, bundle: ModelBundle, name: str, k: int = 3) -> dict[str, float]:
        unit = self._prints.get(name)
        if unit is None:
            return {}
        with torch.no_grad():
            units = torch.from_numpy(unit.astype(np.float32))[None]
            probs = bundle.model.output_of_units(units, units).probs[0].numpy()
        return top_candidates(bundle.labels, probs, k)

    def _update_prints(self, bundle: ModelBundle, clips: list[Path]) -> None:
        if self._prints_model is not bundle:
            self._prints, self._prints_model = {}, bundle
        present = {c.name for c in clips}
        self._prints = {n: p for n, p in self._prints.items() if n in present}
        for clip in clips:
            if clip.name not in self._prints:
                try:
                    self._prints[clip.name] = voice_print(bundle, load_audio(clip))
                except (AudioDecodeError, OSError) as exc:
                    log.warning("web: cannot read the kept clip %s: %s", clip, exc)
                    self._prints[clip.name] = None
