"""Enrollment: add, update, rename or forget a speaker from a few clips without retraining.

A speaker is one reference vector in the model's cosine head, for trained and enrolled speakers alike; enrolling
is embedding the clips' speech (cut by the daemon's own speech gate, so enrollment hears what the daemon hears)
and storing the mean unit embedding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from spkidd import SAMPLE_RATE
from spkidd.audio.base import CHUNK_SAMPLES
from spkidd.audio.decode import load_audio
from spkidd.decide import DecisionSettings
from spkidd.events import UNKNOWN
from spkidd.features import FeatureExtractor
from spkidd.inference import unit_embeddings
from spkidd.modelfile import ModelBundle
from spkidd.vad import GateSettings, SpeechAudio, SpeechGate, UtteranceStart

RESERVED_NAMES = frozenset({UNKNOWN, "none", "unrecognized"})
"""What events and Home Assistant say for nobody (`unknown`, `none`) or an unrecognized voice."""
MAX_NAME_CHARS = 40
"""Long enough for a name, short enough for the page's tables and Home Assistant's cards."""
NAME_RULE = (
    f"a speaker's name is 1 to {MAX_NAME_CHARS} printable characters (letters, digits, punctuation, spaces between "
    f"words), with no space at either end, and not {', '.join(sorted(RESERVED_NAMES))}"
)
MIN_PIECE_S = 0.5
NO_SPEECH = f"no speech found (no stretch of {MIN_PIECE_S:g} s or more)"
"""Shorter stretches (a spoken digit) are too short to tell a voice by; saying only "no speech" would be untrue."""
RECOMMENDED_SPEECH_S = 10.0
SIMILAR_SPEAKER_SCORE = 0.85
SAME_VOICE_SCORE = 0.7
"""The open-set score from which a new speaker's clips are taken for a known speaker's voice and refused unless
forced. Measured with E1's model of 200 LibriSpeech voices: the 51 others' enrollment audio scored at most 0.60
against its best match (12 of them above the threshold of 0.51), another recording of a known voice 0.69 median
(0.53 at the 10th percentile); the same recording under a second name scores 1.0."""
MIN_VOICE_SHARE = 0.2
MIN_VOICE_S = 2.0
"""A second voice counts when it holds at least this share of the clips' speech and this many seconds: a word from
somebody else in the background does not make a voice print of two people, and a second or so of speech split off
one voice is too little to tell a voice by."""
SPLIT_SCORE = DecisionSettings().min_score
"""Two groups of the clips' speech are two voices when their voice prints score below the default threshold against
each other. Not the model's own threshold: that is calibrated on how close strangers come, not on how far halves of
one voice fall apart, and it ranges from 0.33 (P1's six FSDD voices) to 0.94 (the test suite's synthetic household).
benchmarks/enroll_voices.py, development data, 40 enrollments of each kind: one voice warned 1 of 40 with P2's model
(LibriSpeech training parts of 4-10 s; 1 of 40 cut to 5 s) and with E1's (voices it never heard; 0 cut to 5 s), two
and three voices joined caught 100% / 97.5% and 100% / 100%; FSDD digits with P1's model (about 23 s): one voice 0 of
40, two and three voices 70% / 95%, where P1's own threshold caught 37.5% / 80% and the encoder's score alone 22.5% /
0%."""
SPLIT_ITERATIONS = 20


class DifferentVoiceError(ValueError):
    """Speech offered as a known speaker's that sounds more like another's: refused unless forced."""


@dataclass(frozen=True)
class VoiceSplit:
    """The clips' speech split in two groups by voice: each group's seconds of speech (the larger first), and the
    lower of the model's two scores of one group's voice print against the other's: the cosine it names a speaker by,
    and the one its `unknown` threshold is held to: one and the same for the network trained from scratch; for the
    encoder model its household head's and its pretrained encoder's, each of which hears as alike some pairs of
    voices that the other tells apart."""

    speech_s: tuple[float, float]
    score: float

    @property
    def shares(self) -> tuple[float, float]:
        total = sum(self.speech_s)
        return self.speech_s[0] / total, self.speech_s[1] / total


@dataclass
class EnrollmentReport:
    speaker: str
    speech_s: float
    clips: int
    updated: bool
    warnings: list[str] = field(default_factory=list)


def check_name(speaker: str) -> None:
    """The one rule for speaker names, whether from `spkidd enroll`, the web page or training folders: a name says
    who it is (not empty, not a word events use for nobody), and is refused rather than stripped when a space starts
    or ends it, since enrollment keeps the name as given and " alice" would become a second alice."""
    name = speaker.strip()
    if not name:
        raise ValueError("the speaker needs a name")
    if name.lower() in RESERVED_NAMES:
        raise ValueError(f"{speaker!r} is reserved (events say it for nobody); {NAME_RULE}")
    if name != speaker or len(speaker) > MAX_NAME_CHARS or not speaker.isprintable():
        raise ValueError(f"{speaker!r} is not a speaker's name: {NAME_RULE}")


def check_not_a_case_twin(name: str, labels: list[str], renaming: str | None = None) -> None:
    """Refuses a name that differs from another speaker's only in case ("aunt nina" beside "Aunt Nina"): Home
    Assistant would list both, and automations would match the wrong one. `renaming`: that speaker's own name
    may differ from the new one in case alone."""
    for label in labels:
        if label != name and label != renaming and label.casefold() == name.casefold():
            raise ValueError(f"{name!r} differs from the speaker {label!r} only in case; use {label!r} or another name")


def speech_pieces(audio: np.ndarray, gate_settings: GateSettings | None = None) -> list[np.ndarray]:
    """The utterances the daemon's gate would pass on, as float32 arrays."""
    gate = SpeechGate(gate_settings or GateSettings())
    pcm = np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)
    pieces: list[np.ndarray] = []
    current: list[np.ndarray] = []
    events = []
    for start in range(0, len(pcm) - CHUNK_SAMPLES + 1, CHUNK_SAMPLES):
        events.extend(gate.push(pcm[start : start + CHUNK_SAMPLES], start / SAMPLE_RATE))
    events.extend(gate.close())
    for event in events:
        if isinstance(event, UtteranceStart):
            if current:
                pieces.append(np.concatenate(current))
            current = [event.audio]
        elif isinstance(event, SpeechAudio):
            current.append(event.audio)
        elif current:
            pieces.append(np.concatenate(current))
            current = []
    if current:
        pieces.append(np.concatenate(current))
    return [p.astype(np.float32) / 32768.0 for p in pieces if len(p) >= MIN_PIECE_S * SAMPLE_RATE]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x) + 1e-9)


def embed_clips(
    bundle: ModelBundle, clips: dict[str, np.ndarray]
) -> tuple[list[np.ndarray], dict[str, np.ndarray], float]:
    """Centred unit embeddings of the clips' speech (named 16-kHz float arrays), each clip's mean unit embedding,
    and the seconds of speech. A clip's utterances are joined before they are embedded, as a trained speaker's
    recordings are embedded whole (train.references): each utterance apart gives fewer views that rest on two
    seconds of speech. On the development split (a model trained on 200 of its speakers, the other 51 enrolled from
    their training audio) the enrolled speakers' top-1 after 2 s rose from 94.0% to 96.0% of 2-s windows taken every
    0.5 s and from 90.0% to 93.3% of its own windows; the trained speakers' after 2 s stayed where they were."""
    extractor = FeatureExtractor(bundle.features)
    units: list[np.ndarray] = []
    per_clip: dict[str, np.ndarray] = {}
    speech_s = 0.0
    for name, audio in clips.items():
        pieces = speech_pieces(audio)
        speech_s += sum(len(p) for p in pieces) / SAMPLE_RATE
        clip_units = list(unit_embeddings(bundle.model, extractor, [np.concatenate(pieces)])) if pieces else []
        if clip_units:
            per_clip[name] = _unit(np.mean(clip_units, axis=0))
            units.extend(clip_units)
    return units, per_clip, speech_s


def voice_print(bundle: ModelBundle, audio: np.ndarray) -> np.ndarray | None:
    """One clip's unit voice print (for grouping clips by how alike they sound), or None without speech."""
    return embed_clips(bundle, {"clip": audio})[1].get("clip")


def enroll(
    bundle: ModelBundle, speaker: str, clips: list[Path], force: bool = False
) -> tuple[ModelBundle, EnrollmentReport]:
    """A new bundle where `speaker`'s reference is (re)computed from audio files; raises ValueError without
    speech."""
    return enroll_audio(bundle, speaker, {str(clip): load_audio(clip) for clip in clips}, force)


def enroll_audio(
    bundle: ModelBundle, speaker: str, clips: dict[str, np.ndarray], force: bool = False
) -> tuple[ModelBundle, EnrollmentReport]:
    """The same from named 16-kHz float arrays (the web page's uploads and kept clips). Speech added to a known
    speaker counts by its seconds against the seconds that speaker's voice print rests on (training's or earlier
    enrollments'), so a short clip refines a print made of minutes instead of outweighing it; clips that sound more
    like another speaker than like this one, and a new speaker's clips that already pass as a known one, are refused
    unless `force`."""
    check_name(speaker)
    check_not_a_case_twin(speaker, bundle.labels)
    units, per_clip, speech_s = embed_clips(bundle, clips)
    if not units:
        raise ValueError(f"{NO_SPEECH} in {len(clips)} clip(s); nothing enrolled")
    references = bundle.model.speakers.detach().numpy().copy()
    labels = list(bundle.labels)
    enrollment = {k: dict(v) for k, v in bundle.enrollment.items()}
    previous = enrollment.get(speaker, {})
    total = np.sum(units, axis=0)
    updated = speaker in labels
    if updated:
        warnings = _check_same_voice(bundle, speaker, _unit(total), speech_s, force)
        row = labels.index(speaker)
        behind = float(previous.get("seconds", 0.0)) or speech_s
        references[row] = _unit(_unit(references[row]) * behind + _unit(total) * speech_s)
    else:
        warnings = _check_new_voice(bundle, speaker, _unit(total), force)
        labels.append(speaker)
        references = np.vstack([references, _unit(total)[None]])
    report = EnrollmentReport(speaker, speech_s, len(clips), updated, warnings)
    report.warnings.extend(_voices_warning(bundle, units, speech_s))
    report.warnings.extend(_warnings(labels, references, speaker, per_clip, speech_s, list(clips)))
    enrollment[speaker] = {
        "source": "training+enrolled" if updated and previous.get("source") != "enrolled" else "enrolled",
        "seconds": round(float(previous.get("seconds", 0.0)) + speech_s, 2),
        "updated": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    model = bundle.model.with_speakers(torch.from_numpy(references.astype(np.float32)))
    return bundle.edited(model, labels, enrollment), report


def _open_set_scores(bundle: ModelBundle, clips_unit: np.ndarray) -> np.ndarray:
    """The clips' scores against every speaker as the daemon's `unknown` threshold sees them."""
    with torch.no_grad():
        return bundle.model.acceptance_of_units(torch.from_numpy(clips_unit.astype(np.float32))[None])[0].numpy()


def _check_same_voice(
    bundle: ModelBundle, speaker: str, clips_unit: np.ndarray, speech_s: float, force: bool
) -> list[str]:
    """Refuses speech for `speaker` that the open-set scores (the daemon's test of whether a voice is anyone it
    knows) put closer to another speaker; says so when it would not pass as `speaker` (speech the daemon answered
    `unknown` to, added from the web page, is expected to). Compared with the voice print before the update."""
    scores = _open_set_scores(bundle, clips_unit)
    row = bundle.labels.index(speaker)
    best = int(np.argmax(scores))
    own = float(scores[row])
    if best != row and not force:
        raise DifferentVoiceError(
            f"these clips sound more like {bundle.labels[best]} (similarity {scores[best]:.2f}) than like {speaker} "
            f"({own:.2f}); nothing changed. Enroll them under their speaker's own name, or add them to {speaker} "
            "even so"
        )
    threshold = DecisionSettings.from_model(bundle.decision).min_score
    if own < threshold:
        behind = float(bundle.enrollment.get(speaker, {}).get("seconds", 0.0))
        return [
            f"these clips are not much like {speaker}'s voice print so far (similarity {own:.2f}; the daemon names "
            f"{speaker} from {threshold:.2f}); added, {speech_s:.1f} s against the {behind:.1f} s behind it"
        ]
    return []


def _check_new_voice(bundle: ModelBundle, speaker: str, clips_unit: np.ndarray, force: bool) -> list[str]:
    """Refuses a new name for clips that score like a known speaker's own voice: two names for one voice split its
    probability between them, and neither is named again (a user's walk-through: the same recording under a
    second name, then `unknown` at 0.5 / 0.5 for every utterance of that person). Clips that merely pass the
    daemon's threshold for a known speaker are enrolled with a warning: other voices do that too."""
    scores = _open_set_scores(bundle, clips_unit)
    best = int(np.argmax(scores))
    threshold = DecisionSettings.from_model(bundle.decision).min_score
    if scores[best] < threshold:
        return []
    known = bundle.labels[best]
    passes = f"these clips already pass as {known} (similarity {scores[best]:.2f}; the daemon names {known} from "
    passes += f"{threshold:.2f})"
    if scores[best] >= SAME_VOICE_SCORE and not force:
        raise DifferentVoiceError(
            f"{passes} and sound like {known}'s own voice: under a second name neither would be named again; "
            f"nothing changed. Add them to {known}, or enroll {speaker} even so if they really are another person"
        )
    return [f"{passes}: the daemon may confuse {speaker} and {known}"]


def _two_groups(units: np.ndarray) -> np.ndarray:
    """Two-means by cosine on unit embeddings, started from the sign along their main direction of spread (the same
    split every time): True for one group's views, False for the other's."""
    spread = units - units.mean(axis=0)
    direction = np.linalg.svd(spread, full_matrices=False)[2][0]
    group = spread @ direction > 0
    for _ in range(SPLIT_ITERATIONS):
        if group.all() or not group.any():
            break
        ours, theirs = _unit(units[group].sum(axis=0)), _unit(units[~group].sum(axis=0))
        regrouped = units @ ours > units @ theirs
        if np.array_equal(regrouped, group):
            break
        group = regrouped
    return group


def split_voices(bundle: ModelBundle, units: list[np.ndarray], speech_s: float) -> VoiceSplit | None:
    """The clips' views (embed_clips' units, each standing for about as much of the `speech_s` seconds as the next)
    in two groups by voice; None when they all fall in one group."""
    views = np.asarray(units)
    group = _two_groups(views)
    if group.all() or not group.any():
        return None
    ours, theirs = _unit(views[group].sum(axis=0)), _unit(views[~group].sum(axis=0))
    other_print = bundle.model.with_speakers(torch.from_numpy(theirs[None].astype(np.float32)))
    our_unit = torch.from_numpy(ours[None].astype(np.float32))
    with torch.no_grad():
        score = min(
            float(other_print.cosine_of_units(our_unit)[0, 0]), float(other_print.acceptance_of_units(our_unit)[0, 0])
        )
    share = float(group.mean())
    seconds = sorted((share * speech_s, (1 - share) * speech_s), reverse=True)
    return VoiceSplit((seconds[0], seconds[1]), score)


def two_voices(split: VoiceSplit, below: float = SPLIT_SCORE) -> bool:
    """Whether the split is of two voices, each with a real share of the speech, whose prints score `below` against
    each other."""
    return split.shares[1] >= MIN_VOICE_SHARE and split.speech_s[1] >= MIN_VOICE_S and split.score < below


def _voices_warning(bundle: ModelBundle, units: list[np.ndarray], speech_s: float) -> list[str]:
    """Says when the clips hold more than one voice: a print of two people names neither well and takes in
    strangers (a five-voice conversation enrolled as one speaker named a stranger as it at 100%)."""
    split = split_voices(bundle, units, speech_s)
    if split is None or not two_voices(split):
        return []
    big, small = (round(100 * share) for share in split.shares)
    return [
        f"the clips seem to hold more than one voice (about {big}% / {small}% of the speech): enroll one person's "
        "speech only"
    ]


def _warnings(
    labels: list[str],
    references: np.ndarray,
    speaker: str,
    per_clip: dict[str, np.ndarray],
    speech_s: float,
    clips: list[str],
) -> list[str]:
    warnings = []
    silent = [c for c in clips if c not in per_clip]
    if silent:
        warnings.append(f"{NO_SPEECH} in {', '.join(silent)}")
    if speech_s < RECOMMENDED_SPEECH_S:
        warnings.append(
            f"only {speech_s:.1f} s of speech; {RECOMMENDED_SPEECH_S:.0f}-30 s makes a reliable voice print"
        )
    others = [i for i, label in enumerate(labels) if label != speaker]
    other_refs = references[others] / (np.linalg.norm(references[others], axis=1, keepdims=True) + 1e-9)
    odd_clips = []
    for clip, unit in per_clip.items():
        rest = [u for c, u in per_clip.items() if c != clip]
        if rest and other_refs.size:
            best_other = int(np.argmax(other_refs @ unit))
            if float(other_refs[best_other] @ unit) > float(_unit(np.mean(rest, axis=0)) @ unit):
                odd_clips.append(f"{clip} (closer to {labels[others[best_other]]})")
    if odd_clips:
        warnings.append(f"these clips sound more like another speaker than like the rest: {', '.join(odd_clips)}")
    row = labels.index(speaker)
    unit_refs = references / (np.linalg.norm(references, axis=1, keepdims=True) + 1e-9)
    similarity = unit_refs @ unit_refs[row]
    for i, other in enumerate(labels):
        if i != row and similarity[i] > SIMILAR_SPEAKER_SCORE:
            warnings.append(f"{speaker} sounds very much like {other} (similarity {similarity[i]:.2f})")
    return warnings


def forget(bundle: ModelBundle, speaker: str) -> ModelBundle:
    if speaker not in bundle.labels:
        raise ValueError(f"no speaker {speaker!r} in the model (it has: {', '.join(bundle.labels)})")
    if len(bundle.labels) == 1:
        raise ValueError(f"{speaker} is the model's only speaker; a model needs at least one")
    keep = [i for i, label in enumerate(bundle.labels) if label != speaker]
    return bundle.edited(
        bundle.model.with_speakers(bundle.model.speakers.detach()[keep]),
        [bundle.labels[i] for i in keep],
        {k: v for k, v in bundle.enrollment.items() if k != speaker},
    )


def rename(bundle: ModelBundle, speaker: str, new_name: str) -> ModelBundle:
    """The same voices with one speaker renamed (its reference and enrollment record move with it)."""
    if speaker not in bundle.labels:
        raise ValueError(f"no speaker {speaker!r} in the model (it has: {', '.join(bundle.labels)})")
    check_name(new_name)
    if new_name in bundle.labels:
        raise ValueError(f"there is already a speaker called {new_name!r}")
    check_not_a_case_twin(new_name, bundle.labels, renaming=speaker)
    enrollment = {(new_name if k == speaker else k): dict(v) for k, v in bundle.enrollment.items()}
    labels = [new_name if label == speaker else label for label in bundle.labels]
    return bundle.edited(bundle.model, labels, enrollment)
