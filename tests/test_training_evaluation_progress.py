"""`spkidd evaluate`'s progress bars end full when the data holds speakers the model does not know: the decoding
bar stopped at 120/150 for a held-out set with one stranger, as if 30 files had failed."""

from __future__ import annotations

from pathlib import Path

from spkidd.audio_cache import AudioCache
from spkidd.dataset import Row
from spkidd.evaluation import score_rows
from spkidd.modelfile import load_model
from spkidd.synthetic import synth_speech
from tests.conftest import HELD_OUT_SENTENCES
from tests.support.streaming import save_random_model


def test_both_bars_count_every_row_and_strangers_are_counted_apart(tmp_path: Path) -> None:
    bundle = load_model(save_random_model(tmp_path / "m.safetensors", ["alice", "bob"]))
    rows = [
        Row(synth_speech(voice, HELD_OUT_SENTENCES[i], tmp_path / f"{voice}{i}.wav"), voice)
        for i, voice in enumerate(["alice", "bob", "carol", "carol"])
    ]
    decoded: list[int] = []
    scored: list[int] = []

    scoring = score_rows(bundle, rows, AudioCache(tmp_path / "cache"), decoded.append, scored.append)

    assert (sum(decoded), sum(scored)) == (len(rows), len(rows))
    assert scoring.unknown_speakers == {"carol": 2}
    assert len(scoring.truth) == 2
