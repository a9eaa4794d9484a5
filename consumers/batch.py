"""``audiostream batch``: analyse a corpus of audio files into Parquet, one row per window.

The per-file function is ``streamproc.analysis.analyze_file``: the live
analyzer's engine and model bundle, after produce-file's decoding, so results
equal what a replay through Kafka publishes. Engines:

- ``local`` (default): worker processes on this machine, with progress;
- ``spark``: the same function as a PySpark job (``--master local[*]`` here, a
  cluster URL elsewhere); the model bundle travels to executors as a broadcast,
  the files must be readable by them (a shared path or an fsspec URL) and the
  result is a Parquet directory written by Spark.

Inputs are files, directories (searched recursively) or fsspec URLs
(``s3://bucket/prefix``, ``file:///data``) when the scheme's package is installed.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from streamproc.audio import AUDIO_SUFFIXES, FILE_MAX_SECONDS, is_url
from streamproc.errors import AudiostreamError, ConfigError
from streamproc.settings import DEFAULT_MODEL


def find_audio(inputs: list[str]) -> list[tuple[str, str]]:
    """(file, root) for every audio file under ``inputs``, sorted; a root is the directory given."""
    out = []
    for item in inputs:
        if is_url(item):
            try:
                import fsspec
            except ImportError:
                raise ConfigError(f"{item}: URLs need fsspec (pip install 'audiostream[batch]')") from None
            fs, path = fsspec.core.url_to_fs(item)
            protocol = item.split("://", 1)[0]
            if fs.isdir(path):
                found = [p for p in fs.find(path) if p.lower().endswith(AUDIO_SUFFIXES)]
                out += [(f"{protocol}://{p}" if not p.startswith(protocol) else p, item.rstrip("/")) for p in found]
            elif fs.exists(path):
                out.append((item, None))
            else:
                raise ConfigError(f"{item}: no such file or directory")
            continue
        p = Path(item)
        if p.is_dir():
            out += [(str(f), str(p)) for f in sorted(p.rglob("*")) if f.suffix.lower() in AUDIO_SUFFIXES]
        elif p.is_file():
            out.append((str(p), None))
        else:
            raise ConfigError(f"{item}: no such file or directory")
    return sorted(set(out))


def arrow_schema(labels: list[str], n_features: int):
    import pyarrow as pa
    fields = [("file", pa.string()), ("stream_id", pa.string()), ("window_index", pa.int64()),
              ("start_s", pa.float64()), ("end_s", pa.float64()), ("start_sample", pa.int64()),
              ("end_sample", pa.int64()), ("label", pa.string()), ("confidence", pa.float64()),
              ("model", pa.string()), ("gap", pa.bool_()), ("gated", pa.bool_()), ("padded", pa.bool_())]
    fields += [(f"score_{lab}", pa.float64()) for lab in labels]
    from streamproc.analysis import METRIC_COLUMNS
    fields += [(m, pa.float64()) for m in METRIC_COLUMNS]
    fields.append(("features", pa.list_(pa.float32())))
    from streamproc.musicnn.tagging import COLUMNS as MUSIC  # batch --tags; null without it
    from streamproc.rhythm import COLUMNS as RHYTHM  # batch --rhythm; null without it
    kinds = {"float64": pa.float64(), "string": pa.string(), "list<float64>": pa.list_(pa.float64()),
             "list<float32>": pa.list_(pa.float32())}
    fields += [(name, kinds[kind]) for name, kind in {**RHYTHM, **MUSIC}.items()]
    return pa.schema(fields, metadata={b"audiostream.labels": ",".join(labels).encode(),
                                       b"audiostream.n_features": str(n_features).encode()})


# -- local engine ----------------------------------------------------------------------------------
_BUNDLE = None


def single_threaded_blas() -> None:
    """Run BLAS on one thread in this worker process, for the rest of its life.

    Both engines must give bit-identical rows. With OpenBLAS's Haswell/Zen kernels a float32 matmul
    rounds differently on one thread than on two (the rows of the mel/chroma product are split between
    threads), and PySpark starts its Python workers with ``OMP_NUM_THREADS=1`` while a process pool
    inherits the machine's thread count: pinning one thread in both makes them agree on every CPU.
    One file per worker process is the parallelism anyway."""
    from threadpoolctl import threadpool_limits
    threadpool_limits(1)


_TAGGER = None


def _init_worker(model: str, tags: bool = False) -> None:
    global _BUNDLE, _TAGGER
    single_threaded_blas()
    from streamproc.inference import ModelBundle
    _BUNDLE = ModelBundle.load(model, intra_op_threads=1)
    if tags:  # batch --tags: the music tagger, gated by the sound type (streamproc/musicnn/tagging.py)
        from streamproc.musicnn import tagging
        _TAGGER = tagging.load()


def _analyze(path, bundle, root, max_s, rhythm: bool, tagger=None) -> list[dict]:
    from streamproc.analysis import analyze_file, analyze_pcm, stream_id_for
    if not (rhythm or tagger):
        return analyze_file(path, bundle, root=root, max_seconds=max_s)
    from streamproc.audio import from_s16, load, to_s16
    pcm = to_s16(load(path, bundle.spec.sr, max_seconds=max_s))  # decoded once for every view
    sid = stream_id_for(path, root)
    rows = analyze_pcm(pcm, bundle, file=str(path), stream_id=sid)
    if rhythm:  # the whole track's tempo, beats and key (streamproc/rhythm.py)
        from streamproc import rhythm as rh
        rh.add_columns(rows, rh.analyze(from_s16(pcm), bundle.spec.sr))
    if tagger is not None:  # music tags + embedding of the music windows (streamproc/musicnn/tagging.py)
        from streamproc.musicnn import tagging
        tagging.add_columns(rows, tagging.tag_pcm(pcm, tagger, sid))
    return rows


def _work(item):
    path, root, max_s, *rhythm = item  # (path, root, max seconds[, rhythm])
    rhythm = bool(rhythm and rhythm[0])
    try:
        return path, _analyze(path, _BUNDLE, root, max_s, rhythm, _TAGGER), None
    except AudiostreamError as exc:
        return path, [], str(exc)
    except Exception as exc:  # a file the decoders choke on must not stop the corpus
        return path, [], f"{path}: {type(exc).__name__}: {exc}"


def run_local(items, model: str, workers: int, progress: bool, tags: bool = False) -> tuple[list[dict], list[str]]:
    from streamproc.progress import Progress
    bar = Progress(f"analysing {len(items)} file(s) on {workers} process(es)", len(items), enabled=progress)
    rows, errors = [], []
    if workers <= 1:
        _init_worker(model, tags)
        results = map(_work, items)
    else:
        import multiprocessing as mp
        pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(model, tags))
        results = pool.imap(_work, items, chunksize=1)
    try:
        for i, (path, file_rows, err) in enumerate(results, 1):
            rows += file_rows
            if err:
                errors.append(err)
            bar.update(i, f"{len(rows)} windows" + (f", {len(errors)} bad file(s)" if errors else ""))
    finally:
        if workers > 1:
            pool.close()
            pool.join()
    return rows, errors


# -- spark engine --------------------------------------------------------------------------------------
def spark_schema(labels: list[str], n_features: int):
    """The same columns as the local engine's file (one definition: ``arrow_schema``)."""
    from pyspark.sql.pandas.types import from_arrow_schema
    return from_arrow_schema(arrow_schema(labels, n_features))


def _spark_partition(items, bundle_files, columns):
    """Runs on an executor: materialise the broadcast bundle once per partition, analyse its files."""
    import tempfile as tf
    from streamproc.inference import ModelBundle
    single_threaded_blas()
    with tf.TemporaryDirectory(prefix="audiostream-bundle-") as d:
        for name, data in bundle_files.value.items():
            Path(d, name).write_bytes(data)
        bundle = ModelBundle.load(d, intra_op_threads=1)
        for path, root, max_s, *rhythm in items:
            try:
                rows = _analyze(path, bundle, root, max_s, bool(rhythm and rhythm[0]))
            except Exception as exc:  # counted on the driver through the error rows
                yield ("__error__", f"{path}: {exc}") + (None,) * (len(columns) - 2)
                continue
            for r in rows:
                yield tuple(r.get(c) for c in columns)


def run_spark(items, model: str, out: str, master: str, progress: bool) -> tuple[int, list[str]]:
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ConfigError("--engine spark needs pyspark (pip install 'audiostream[spark]') and Java 17+") from None
    from streamproc.inference import ModelBundle, resolve
    bundle_dir = resolve(model)
    bundle = ModelBundle.load(bundle_dir)  # fail fast on the driver, with the same checks
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    spark = (SparkSession.builder.master(master).appName("audiostream-batch")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", str(progress).lower())
             .config("spark.sql.session.timeZone", "UTC").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    try:
        schema = spark_schema(bundle.labels, bundle.spec.n_features)
        columns = [f.name for f in schema.fields]
        files = spark.sparkContext.broadcast({n: (bundle_dir / n).read_bytes() for n in ("model.onnx", "model.yaml")})
        slices = max(1, min(len(items), spark.sparkContext.defaultParallelism * 4))
        rdd = spark.sparkContext.parallelize(items, slices).mapPartitions(
            lambda it: _spark_partition(it, files, columns)).cache()
        errors = [r[1] for r in rdd.filter(lambda r: r[0] == "__error__").collect()]
        good = rdd.filter(lambda r: r[0] != "__error__")
        df = spark.createDataFrame(good, schema)
        df.write.mode("overwrite").parquet(out)
        n = spark.read.parquet(out).count()
        return n, errors
    finally:
        spark.stop()


# -- CLI -------------------------------------------------------------------------------------------------
def add_parser(sub):
    p = sub.add_parser("batch", help="analyse audio files into Parquet (one row per window), locally or on Spark",
                       description=__doc__)
    p.add_argument("inputs", nargs="+", help="files, directories (recursive) or fsspec URLs")
    p.add_argument("--out", required=True, help="Parquet output (a file; a directory with --engine spark)")
    p.add_argument("--engine", choices=("local", "spark"), default="local")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model bundle: task[:version] or a directory ({DEFAULT_MODEL})")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="local engine: processes")
    p.add_argument("--master", default="local[*]", help="spark engine: master URL (local[*], spark://..., yarn)")
    p.add_argument("--max-duration", type=float, default=FILE_MAX_SECONDS, metavar="SECONDS",
                   help=f"skip a file longer than this, checked before decoding (default: {FILE_MAX_SECONDS:g}; 0 = none)")
    p.add_argument("--rhythm", action="store_true",
                   help="also each file's tempo, tempo stability, beats, downbeats and key (docs/rhythm.md): "
                        "columns track_tempo_bpm, track_tempo_stability, key, key_confidence, local_tempo_bpm, "
                        "beats_s, downbeats_s")
    p.add_argument("--tags", action="store_true",
                   help="local engine: also musicnn tags and embedding of the music windows (docs/music.md): "
                        "columns music_top, music_embedding (what serve --index ranks /v1/similar?space=music by)")
    p.add_argument("--quiet", "-q", action="store_true")
    p.add_argument("--transcribe", action="store_true",
                   help="also speech to text: OUT's name + .transcripts.parquet, one row per utterance (the records "
                        "of `transcribe --json`; local engine)")
    p.set_defaults(func=run)


# -- --transcribe: transcripts beside the window labels ---------------------------------------------------
def transcripts_path(out: str) -> Path:
    p = Path(out)
    return p.with_name((p.stem if p.suffix == ".parquet" else p.name) + ".transcripts.parquet")


def transcript_schema():
    import pyarrow as pa
    return pa.schema([("file", pa.string()), ("stream_id", pa.string()), ("id", pa.string()),
                      ("start_sample", pa.int64()), ("end_sample", pa.int64()), ("start_s", pa.float64()),
                      ("end_s", pa.float64()), ("text", pa.string()), ("confidence", pa.float64()),
                      ("language", pa.string()), ("reason", pa.string()), ("model", pa.string())])


def run_transcripts(items, out: str, progress: bool) -> tuple[int, list[str]]:
    """Every file's transcript records (streamproc.transcribe.file_records: what ``transcribe --json`` prints),
    one Parquet row each, written atomically beside ``out``. Bad files are skipped and reported."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from streamproc.analysis import stream_id_for
    from streamproc.audio import load
    from streamproc.progress import Progress
    from streamproc.segmentation import SAMPLE_RATE
    from streamproc.transcribe import file_records
    from streamproc.transcription import Transcriber
    asr = Transcriber.load("transcription")  # a missing model fails before any work
    bar = Progress(f"transcribing {len(items)} file(s)", len(items), enabled=progress)
    rows, errors = [], []
    for i, (path, root, max_s, *_options) in enumerate(items, 1):  # (path, root, max seconds, analysis options...)
        try:
            y = load(path, SAMPLE_RATE, max_seconds=max_s)
        except AudiostreamError as exc:
            errors.append(str(exc))
            continue
        for r in file_records(y, asr, stream_id=stream_id_for(path, root)):
            rows.append({"file": path, **{k: r[k] for k in ("stream_id", "id", "start_sample", "end_sample",
                                                              "start_s", "end_s", "text", "confidence", "language",
                                                              "reason")},
                         "model": json.dumps(r["model"], sort_keys=True)})
        bar.update(i, f"{len(rows)} utterances")
    target = transcripts_path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".tmp", delete=False) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=transcript_schema()), tmp.name)
    os.replace(tmp.name, target)
    return len(rows), errors


def run(args) -> int:
    items = [(p, r, args.max_duration or None, args.rhythm) for p, r in find_audio(args.inputs)]  # a hostile file is skipped
    if not items:
        raise ConfigError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) under {' '.join(args.inputs)}")
    if args.transcribe and args.engine != "local":
        raise ConfigError("--transcribe runs with the local engine only (--engine local)")
    from streamproc.inference import ModelBundle
    bundle = ModelBundle.load(args.model)  # a bad bundle fails before any work
    t0 = time.monotonic()
    if args.engine == "spark" and args.tags:
        raise ConfigError("--tags runs on the local engine only (for now)")
    if args.engine == "spark":
        n, errors = run_spark(items, args.model, args.out, args.master, not args.quiet)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq
        rows, errors = run_local(items, args.model, max(1, args.workers), not args.quiet, args.tags)
        table = pa.Table.from_pylist(rows, schema=arrow_schema(bundle.labels, bundle.spec.n_features))
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".tmp", delete=False) as tmp:
            pq.write_table(table, tmp.name)
        os.replace(tmp.name, out)  # a reader never sees half a file
        n = table.num_rows
    if args.transcribe:
        n_utt, _bad = run_transcripts(items, args.out, not args.quiet)  # the same files fail here as above
        print(f"{n_utt} utterances -> {transcripts_path(args.out)}", file=sys.stderr)
    for err in errors:
        print(f"skipped: {err}", file=sys.stderr)
    print(f"{n} windows from {len(items) - len(errors)} file(s) -> {args.out} ({args.engine}, model {bundle.ref}, "
          f"{time.monotonic() - t0:.1f} s)" + (f"; {len(errors)} file(s) skipped" if errors else ""), file=sys.stderr)
    return 1 if errors and len(errors) == len(items) else 0
