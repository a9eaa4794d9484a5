"""Speech made at test time with espeak-ng (installed by deploy/setup.sh): no audio committed."""
from __future__ import annotations

import io
import subprocess

import numpy as np

SR = 16000

# Harvard sentences (IEEE 1969 lists 1-3; public domain): the espeak-ng reference set of docs/transcription.md.
HARVARD = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.",
    "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.",
    "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.",
    "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.",
    "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.",
    "The girl at the booth sold fifty bonds.",
    "The small pup gnawed a hole in the sock.",
    "The fish twisted and turned on the bent hook.",
    "Press the pants and sew a button on the vest.",
    "The swan dive was far short of perfect.",
    "The beauty of the view stunned the young boy.",
    "Two blue fish swam in the tank.",
    "Her purse was full of useless trash.",
    "The colt reared and threw the tall rider.",
    "It snowed, rained, and hailed the same morning.",
    "Read verse out loud for pleasure.",
]


def say(text: str, voice: str = "en-us", speed: int = 160) -> np.ndarray:
    """``text`` spoken by espeak-ng, float32 mono at 16 kHz."""
    import soundfile as sf
    import soxr
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text], check=True,
                         capture_output=True, timeout=60).stdout
    y, sr = sf.read(io.BytesIO(wav), dtype="float32")
    return soxr.resample(y, sr, SR).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * SR)), dtype=np.float32)


def stream_of(sentences, gaps, voice: str = "en-us") -> np.ndarray:
    """Sentences one after another with ``gaps[i]`` seconds of silence before sentence i (and 0.5 s after)."""
    parts = []
    for text, gap in zip(sentences, gaps):
        parts += [silence(gap), say(text, voice)]
    return np.concatenate(parts + [silence(0.5)])
