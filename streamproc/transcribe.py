"""Transcribe an audio file offline: utterances cut by voice activity, each through Whisper on CPU.

The file is decoded to 16 kHz mono, fed to the same stream segmenter a live
service uses (Silero VAD on stream time), and each utterance is transcribed by
the model of the transcription bundle (weights from a pinned registry package,
verified by sha256; nothing is downloaded). Prints ``start-end  text`` lines, or
one JSON transcript record per utterance with ``--json``
(docs/transcription.md).

Examples::

  audiostream transcribe meeting.wav
  audiostream transcribe meeting.wav --json --words > meeting.jsonl
  audiostream transcribe meeting.wav --asr-model ~/models/faster-whisper-base
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from .errors import ConfigError

DEFAULT_MODEL = "transcription"


def add_parser(sub):
    p = sub.add_parser("transcribe", help="speech to text for an audio file (offline Whisper on CPU)",
                       description=__doc__)
    p.add_argument("file", help="audio file (wav, flac, ogg, mp3, ...) or an fsspec URL")
    p.add_argument("--json", action="store_true", help="one JSON transcript record per utterance")
    p.add_argument("--words", action="store_true",
                   help="word timings in the records (measured: about 2x the engine CPU time)")
    p.add_argument("--asr-model", default=DEFAULT_MODEL,
                   help="transcription bundle (path or transcription[:version]) or a local CTranslate2 Whisper "
                        "model directory")
    p.add_argument("--stream-id", default=None, help="stream id in the records (default: the file's name)")
    p.add_argument("--cpu-threads", type=int, default=1, help="threads the engine may use")
    p.add_argument("--whole-file", action="store_true",
                   help="no segmentation: the engine's own long-form decoding of the whole file, one line")
    add_segmentation_arguments(p)
    p.set_defaults(func=run)


def add_segmentation_arguments(p) -> None:
    """``--long-pause`` / ``--min-utterance``: the two segmentation settings that trade caption latency for word
    error rate (docs/transcription.md); the same flags on ``transcribe`` and ``transcriber`` cut the same
    utterances."""
    p.add_argument("--long-pause", type=float, default=None, metavar="SECONDS",
                   help="a pause this long ends any utterance (bundle: 2.0); shorter = captions sooner, utterances "
                        "shorter (see docs/transcription.md for the measured word error rate)")
    p.add_argument("--min-utterance", type=float, default=None, metavar="SECONDS",
                   help="a shorter pause (the 0.5 s hangover) ends an utterance only once it is this long (bundle: 5)")
    p.add_argument("--caption-pause", type=float, default=None, metavar="SECONDS",
                   help="a pause this long gives the transcriber's pause caption (default: the 0.5 s hangover; "
                        "between the 0.2 s pad and it); offline paths cut the same utterances whatever it is")


def segmentation_overrides(args) -> dict:
    """The segmentation settings given on the command line (validated by SegmenterConfig when loaded)."""
    out = {}
    if getattr(args, "long_pause", None) is not None:
        out["long_pause_s"] = args.long_pause
    if getattr(args, "min_utterance", None) is not None:
        out["min_utterance_s"] = args.min_utterance
    if getattr(args, "caption_pause", None) is not None:
        out["caption_pause_s"] = args.caption_pause
    return out


def session_of(y) -> str:
    """An offline file's session id: 32 hex digits of the decoded samples' sha256 (same file, same ids)."""
    return hashlib.sha256(y.tobytes()).hexdigest()[:32]


def utterance_record(transcriber, utt, *, stream_id: str, session_id: str | None, words: bool = False):
    """One finished utterance -> its transcript record, or None when Whisper hears no text in it. The step a
    service takes for every utterance its per-stream Segmenter returns."""
    from .segmentation import SAMPLE_RATE
    from .transcription import transcript_record
    result = transcriber.transcribe(utt.audio, words=words)
    if not result.text:
        return None
    return transcript_record(stream_id=stream_id, session_id=session_id, start_sample=utt.start_sample,
                             end_sample=utt.end_sample, sample_rate=SAMPLE_RATE, result=result,
                             model=transcriber.model_id, reason=utt.reason)


def transcribe_signal(y, transcriber, *, stream_id: str, session_id: str | None, words: bool = False,
                      segmenter_config=None, start_sample: int = 0):
    """Records of every utterance of a whole 16 kHz signal (the offline path; a service feeds a Segmenter as
    frames arrive and calls :func:`utterance_record` per utterance). Utterances with no text yield no record."""
    from .segmentation import segment
    for utt in segment(y, segmenter_config or transcriber.segmenter_config, start_sample=start_sample):
        rec = utterance_record(transcriber, utt, stream_id=stream_id, session_id=session_id, words=words)
        if rec is not None:
            yield rec


def as_streamed(y):
    """The samples a live stream of this file carries: int16 on the wire (``produce-file``), back to float32 as
    the transcriber decodes them. Every offline path transcribes these, so it gives the live service's answers."""
    from .audio import from_s16, to_s16
    return from_s16(to_s16(y))


def file_records(y, transcriber, *, stream_id: str, words: bool = False) -> list[dict]:
    """Transcript records of a decoded 16 kHz file: what ``transcribe --json``, ``POST /v1/transcribe`` and
    ``batch --transcribe`` give, and (text and sample bounds) what the transcriber service publishes for a replay."""
    y = as_streamed(y)
    return list(transcribe_signal(y, transcriber, stream_id=stream_id, session_id=session_of(y), words=words))


def run(args) -> int:
    from .audio import is_url, load
    from .segmentation import SAMPLE_RATE
    from .transcription import Transcriber
    if args.cpu_threads < 1:
        raise ConfigError(f"--cpu-threads {args.cpu_threads} must be at least 1")
    y = as_streamed(load(args.file, SAMPLE_RATE))  # a bad file fails before the model is loaded
    transcriber = Transcriber.load(args.asr_model, cpu_threads=args.cpu_threads,
                                   segmentation=segmentation_overrides(args))
    stream_id = args.stream_id or (args.file.rstrip("/").rsplit("/", 1)[-1] if is_url(args.file)
                                   else Path(args.file).name)
    if args.whole_file:
        result = transcriber.transcribe_file(y)
        print(json.dumps({"stream_id": stream_id, "text": result.text, "language": result.language,
                          "confidence": result.avg_logprob, "model": transcriber.model_id})
              if args.json else result.text, flush=True)
        return 0
    try:
        for rec in transcribe_signal(y, transcriber, stream_id=stream_id, session_id=session_of(y),
                                     words=args.words):
            if args.json:
                print(json.dumps(rec), flush=True)
            else:
                print(f"{rec['start_s']:8.2f}-{rec['end_s']:<8.2f} {rec['text']}", flush=True)
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
