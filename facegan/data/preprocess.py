"""The `preprocess` stage's library: source images -> aligned face cache, manifest and report.

Order is deterministic: CelebA partition (train, val, test; images the partition file does not
list come last) then relative file name, so "the first N accepted faces" is the same set on every
machine. The files go in chunks of `data.mtcnn.batch_size`; each chunk is decoded by `load_rgb`,
detected by MTCNN as one batch per image size and aligned by `FaceAligner`, and accepted faces go
to `CacheWriter` in file order until N are kept. Decoding never crashes: a corrupt or unreadable
image is rejected as `unreadable`, one whose header gives more than MAX_DECODE_PIXELS pixels as
`too_large` before it is decoded, one whose float or wide integer pixels have no known scale as
`unsupported_pixels`. 16-bit images and floats in [0, 1] are scaled to 8 bits; a grey image is
kept as RGB, with "grey source" in its row's detail and counted in the report's
`kept_grey_sources`. Every `data.checkpoint_every` images the cache array, the manifest written so
far and the position are saved, so an interrupted run resumes there (a run with other params or
another file list starts over). Synthetic faces are drawn aligned, so they are only resized (no
MTCNN: the demo stays fast).

Two ways to run the chunks, with the same chunks, so the same faces in the same order:
- parallel (the default, `AlignWorkers`): on CPU, worker processes each decode, detect (one torch
  thread each, the fast exact max pools) and warp whole chunks (one batched warp), and the main
  process writes their results in order; on a GPU, worker processes decode and the main process
  detects and warps on the GPU.
- sequential (`workers=0`, `SequentialAlign`): the reference, as preprocess ran before: decoding on
  threads, MTCNN with torch's pools and one warp per image in this process.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import multiprocessing
import os
import signal
import sys
import time
import warnings
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from facegan import handoff, settings
from facegan.data.cache import CacheWriter
from facegan.data.download import read_file_list
from facegan.errors import UserError
from facegan.io import write_json

log = logging.getLogger(__name__)

# file names are kept byte-exact (facegan.data.download): a name that is not UTF-8 goes into the CSV as
# the bytes it has on disk
MANIFEST_ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}
MANIFEST_FIELDS = ["source_file", "status", "reason", "detail", "probability", "box", "landmarks", "cache_index"]
PARTIAL_MANIFEST = "manifest.partial.csv"
PARTITION_NAMES = {0: "train", 1: "val", 2: "test"}


def read_partition(path: str | Path | None) -> dict[str, int]:
    if not path:
        return {}
    partition = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isdigit():
            raise UserError(f"{path} line {number} is not '<file> <partition>': use CelebA's list_eval_partition.txt")
        partition[fields[0]] = int(fields[1])
    return partition


def ordered_files(raw_dir: Path, source: handoff.RawSource) -> list[str]:
    """The source's images, relative to its image_root, in the deterministic processing order."""
    files = read_file_list(raw_dir)
    if files is None:  # synthetic faces: drawn straight into image_root, no list
        files = sorted(p.name for p in Path(source.image_root).glob("*.png"))
    partition = read_partition(source.partition_file)
    unknown = len(PARTITION_NAMES)
    return sorted(files, key=lambda name: (partition.get(Path(name).name, unknown), name))


# The decode budget: an image whose header says it has more pixels is refused before decoding. A
# chunk holds `data.mtcnn.batch_size` decoded images per worker, and a palette PNG of a few hundred
# KB can claim 150M pixels (3.7 GB to decode); 8192x8192 still takes a 50-megapixel phone photo
# (CelebA's in-the-wild images are a few megapixels). Pillow's own limit, which its
# DecompressionBombError enforces at open, is twice its 89M-pixel warning: too late for a chunk.
MAX_DECODE_PIXELS = 8192 * 8192
GREY_SOURCE = "grey source"  # the detail of a row whose image was grey, converted to RGB
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
# Pillow's integer modes wider than 8 bits: 16-bit greys (a 16-bit grey PNG opens as I;16) and I,
# 32-bit, which holds 16-bit data too
WIDE_INTEGER_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


class _Refused(Exception):
    """An image refused by its header or its pixel values, under its manifest reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def load_rgb(path: Path) -> tuple[np.ndarray | None, str]:
    """Decode an image to RGB uint8: (pixels, note), or (None, "reason: detail") for an image refused.

    The note is "" or GREY_SOURCE. The reasons (`rejection` splits them off): `unreadable` (corrupt,
    truncated, not an image), `too_large` (more than MAX_DECODE_PIXELS pixels by its header: never
    decoded) and `unsupported_pixels` (16/32-bit integers outside 0..65535, floats outside [0, 1] or
    not finite: their scale is unknown). 16-bit data is scaled to 8 bits and float data in [0, 1] by
    255; Pillow's convert("RGB") would clip both to black or white.
    """
    try:
        with warnings.catch_warnings():  # Pillow warns of a large image at open: the budget below refuses it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)  # lazy: the header is read, the pixels are not
        with image:
            _check_decode_budget(image)
            image.load()  # decode now: truncated or corrupt data raises here, not later
            image = ImageOps.exif_transpose(image)  # phone photos: upright as they are shown
            return _rgb_pixels(image), GREY_SOURCE if image.mode in GREY_MODES else ""
    except _Refused as refused:
        return None, f"{refused.reason}: {refused.detail}"
    except Image.DecompressionBombError as err:  # Pillow refuses it at open, before we see its size
        return None, f"too_large: {err}"
    except Exception as err:  # noqa: BLE001 - any decoder failure is a rejection with its reason
        return None, "unreadable: " + f"{type(err).__name__}: {err}"[:200]


def rejection(why: str) -> tuple[str, str]:
    """(reason, detail) of load_rgb's "reason: detail" for an image it refused."""
    reason, _, detail = why.partition(": ")
    return reason, detail


def _check_decode_budget(image: Image.Image) -> None:
    width, height = image.size
    if width * height > MAX_DECODE_PIXELS:
        raise _Refused(
            "too_large",
            f"{width}x{height} px = {width * height:,} pixels > the {MAX_DECODE_PIXELS:,}-pixel limit; not decoded",
        )


def _rgb_pixels(image: Image.Image) -> np.ndarray:
    if image.mode in WIDE_INTEGER_MODES:
        return _grey_to_rgb(_sixteen_to_eight_bits(np.asarray(image), image.mode))
    if image.mode == "F":
        return _grey_to_rgb(_unit_float_to_eight_bits(np.asarray(image)))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.array(image, dtype=np.uint8)


def _sixteen_to_eight_bits(values: np.ndarray, mode: str) -> np.ndarray:
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 65535:
        raise _Refused("unsupported_pixels", f"mode {mode} pixels span {low}..{high}, outside 16-bit 0..65535")
    # round(v / 257): the inverse of 8 -> 16 bits (v * 257), so 65535 -> 255 and 32768 -> 128
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _unit_float_to_eight_bits(values: np.ndarray) -> np.ndarray:
    finite = np.isfinite(values)
    if not finite.all():
        raise _Refused("unsupported_pixels", f"float pixels: {int((~finite).sum())} are NaN or infinite")
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > 1.0:
        raise _Refused("unsupported_pixels", f"float pixels span {low:g}..{high:g}, outside [0, 1]")
    return np.rint(values * 255.0).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))


def _fmt(values, digits: int = 1) -> str:
    return "" if values is None else " ".join(f"{v:.{digits}f}" for v in np.asarray(values).reshape(-1))


class _Manifest:
    """The manifest rows written so far, in the cache's work folder, truncated on resume."""

    def __init__(self, path: Path, resume_bytes: int | None):
        self.path = path
        if resume_bytes is None or not path.exists():
            with open(path, "w", newline="", **MANIFEST_ENCODING) as handle:
                csv.writer(handle).writerow(MANIFEST_FIELDS)
        else:
            with open(path, "r+b") as handle:
                handle.truncate(resume_bytes)
        self.handle = open(path, "a", newline="", **MANIFEST_ENCODING)  # noqa: SIM115 - closed by close(), kept open across batches
        self.writer = csv.DictWriter(self.handle, fieldnames=MANIFEST_FIELDS)

    def add(self, row: dict) -> None:
        self.writer.writerow(row)

    def flush(self) -> int:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        return self.handle.tell()

    def close(self) -> None:
        self.handle.close()

    def counts(self) -> Counter:
        with open(self.path, newline="", **MANIFEST_ENCODING) as handle:
            return Counter(row["reason"] for row in csv.DictReader(handle))

    def kept_grey_sources(self) -> int:
        """Kept faces whose source image was grey (over the whole run, as `counts`)."""
        with open(self.path, newline="", **MANIFEST_ENCODING) as handle:
            rows = csv.DictReader(handle)
            return sum(row["status"] == "kept" and GREY_SOURCE in row["detail"].split("; ") for row in rows)


def _fingerprint(data: settings.DataSettings, files: list[str], source: handoff.RawSource) -> str:
    relevant = data.model_dump(include={"resolution", "num_faces", "mtcnn", "align"})
    relevant["mtcnn"] = {k: v for k, v in relevant["mtcnn"].items() if k not in ("batch_size", "device", "cpu_threads")}
    digest = hashlib.sha256(json.dumps([relevant, source.image_root, source.source], sort_keys=True).encode())
    digest.update("\n".join(files).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


def preprocess_synthetic(
    data: settings.DataSettings, source: handoff.RawSource, files: list[str], cache_dir: Path, report_path: Path
) -> dict:
    size, root = data.resolution, Path(source.image_root)
    start = time.time()
    writer = CacheWriter(cache_dir, size, min(len(files), data.num_faces))
    rows = []
    writer.count = 0  # drawing is fast and deterministic: always rewrite from the start
    for name in tqdm(files[: writer.capacity], desc="caching faces", disable=None):
        image = Image.open(root / name).convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.LANCZOS)
        index = writer.add(np.asarray(image))
        rows.append(
            {
                "source_file": name,
                "status": "kept",
                "reason": "kept",
                "detail": "synthetic: drawn aligned, MTCNN not run",
                "cache_index": index,
            }
        )
    manifest = writer.work / PARTIAL_MANIFEST
    with open(manifest, "w", newline="") as handle:
        out = csv.DictWriter(handle, fieldnames=MANIFEST_FIELDS)
        out.writeheader()
        out.writerows(rows)
    writer.finish(source="synthetic", synthetic=True, manifest=manifest)
    elapsed = time.time() - start
    report = {
        "source": "synthetic",
        "device": "cpu",
        "considered": len(rows),
        "kept": len(rows),
        "rejected": {},
        "images_per_s": round(len(rows) / max(elapsed, 1e-9), 1),
        "elapsed_s": round(elapsed, 2),
        "mtcnn": False,
    }
    write_json(report_path, report)
    return report


@dataclass
class Chunk:
    """One chunk of source files on its way through decoding, detection and alignment."""

    names: list[str]
    images: list[np.ndarray | None] = field(default_factory=list)  # decoded; dropped once aligned
    refused: dict[int, tuple[str, str]] = field(default_factory=dict)  # index in names -> (reason, detail): not decoded
    notes: dict[int, str] = field(default_factory=dict)  # index -> what a decoded image's row says of its source
    detections: dict = field(default_factory=dict)  # index -> Detection, for each decoded image
    faces: dict = field(default_factory=dict)  # index -> aligned face, for each kept detection
    seconds: Counter = field(default_factory=Counter)  # decode / detect / align time spent on it


def _decoded(root: Path, names: list[str]) -> Chunk:
    start = time.perf_counter()
    chunk = Chunk(names, *_split_loaded([load_rgb(root / name) for name in names]))
    chunk.seconds["decode"] = time.perf_counter() - start
    return chunk


def _split_loaded(loaded: list[tuple[np.ndarray | None, str]]) -> tuple[list, dict[int, tuple[str, str]], dict]:
    """load_rgb's results as a Chunk's images, refused images and notes."""
    refused = {i: rejection(why) for i, (image, why) in enumerate(loaded) if image is None}
    notes = {i: why for i, (image, why) in enumerate(loaded) if image is not None and why}
    return [image for image, _ in loaded], refused, notes


def _aligned(aligner, chunk: Chunk) -> Chunk:
    """Detect and align the chunk's decoded images (in whatever process holds `aligner`)."""
    readable = [i for i, image in enumerate(chunk.images) if image is not None]
    aligner.seconds.clear()
    detections, faces = aligner.process([chunk.images[i] for i in readable])
    chunk.seconds.update(aligner.seconds)
    chunk.detections = dict(zip(readable, detections))
    chunk.faces = {i: face for i, face in zip(readable, faces) if face is not None}
    chunk.images = []  # a worker sends back faces, not the photos
    return chunk


class SequentialAlign:
    """The reference path: decode the next chunk on threads while this process detects the current one
    and warps its faces one by one (how preprocess ran before it ran in parallel)."""

    def __init__(self, data: settings.DataSettings, device, root: Path):
        from facegan.data.align import FaceAligner

        self.aligner, self.root = FaceAligner(data, device, fast=False), root
        self.device, self.workers = torch.device(device), 0

    def __enter__(self) -> SequentialAlign:
        self.pool = ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1)))
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def chunks(self, chunks: list[list[str]]) -> Iterator[Chunk]:
        def submit(names):
            return [self.pool.submit(load_rgb, self.root / name) for name in names]

        pending = submit(chunks[0]) if chunks else []
        for number, names in enumerate(chunks):
            start = time.perf_counter()
            loaded = [future.result() for future in pending]
            pending = submit(chunks[number + 1]) if number + 1 < len(chunks) else []
            chunk = Chunk(names, *_split_loaded(loaded))
            chunk.seconds["decode"] = time.perf_counter() - start  # waiting for the threads
            yield _aligned(self.aligner, chunk)


_worker_aligner = None  # in a worker process: the FaceAligner it detects with, None where it only decodes


def _start_worker(aligner, threads: int, parent: int) -> None:
    global _worker_aligner
    _die_with(parent)
    _worker_aligner = aligner
    torch.set_num_threads(threads)


def _die_with(parent: int) -> None:
    """A worker ends when the process that started it dies (killed, out of memory): an orphan would keep
    computing for no one and hold the stage's lock, which it inherited with the fork."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


def _work_on(root: Path, names: list[str]) -> Chunk:
    chunk = _decoded(root, names)
    return chunk if _worker_aligner is None else _aligned(_worker_aligner, chunk)


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers(device, cpu_threads: int) -> int:
    """On CPU a worker process every `cpu_threads` cores (0, torch's default: one with them all); next
    to a GPU, every core but the one driving the GPU decodes (at most 8)."""
    cores = cpu_cores()
    if torch.device(device).type == "cpu":
        return max(1, cores // (cpu_threads or cores))
    return max(1, min(8, cores - 1))


class AlignWorkers:
    """Chunks in worker processes, results in file order.

    On CPU each worker decodes, detects and warps (MTCNN on `data.mtcnn.cpu_threads` threads, 0 =
    its share of the cores) and sends back only the faces; on a GPU the workers decode and this
    process detects and warps there.
    """

    def __init__(self, data: settings.DataSettings, device, root: Path, workers: int):
        from facegan.data.align import FaceAligner

        self.root, self.workers, self.device = root, workers, torch.device(device)
        self.aligner = FaceAligner(data, self.device, fast=True)  # CPU: built once here, copied into the workers
        self.threads = int(data.mtcnn.cpu_threads) or max(1, cpu_cores() // workers)
        # CPU: a chunk queued behind each running one, so no worker waits for this process; GPU: decoded
        # photos come back whole (a chunk of phone photos is ~1 GB), so one chunk ahead of the decoders
        self.in_flight = 2 * workers if self.device.type == "cpu" else workers + 1

    def __enter__(self) -> AlignWorkers:
        on_cpu = self.device.type == "cpu"
        # fork: a worker starts with torch imported and MTCNN loaded (spawn pays ~10 s of imports per
        # worker on 2 cores); next to a GPU the workers only decode JPEGs and never touch CUDA.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        self.pool = ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context(method),
            initializer=_start_worker,
            initargs=(self.aligner if on_cpu else None, self.threads if on_cpu else 1, os.getpid()),
        )
        self.pool.submit(int).result()  # start the workers now, before tqdm starts a thread of its own
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def chunks(self, chunks: list[list[str]]) -> Iterator[Chunk]:
        upcoming = iter(chunks)
        in_flight: deque = deque()
        for names in upcoming:
            in_flight.append(self.pool.submit(_work_on, self.root, names))
            if len(in_flight) == self.in_flight:
                break
        while in_flight:
            chunk = self._result(in_flight.popleft())
            names = next(upcoming, None)
            if names is not None:
                in_flight.append(self.pool.submit(_work_on, self.root, names))
            yield chunk if self.device.type == "cpu" else _aligned(self.aligner, chunk)  # GPU: detect here

    @staticmethod
    def _result(future) -> Chunk:
        try:
            return future.result()
        except BrokenProcessPool as err:
            raise UserError(
                "a preprocess worker process died (out of memory?): run `dvc repro preprocess` again to resume"
            ) from err


def _manifest_row(name: str, index: int, chunk: Chunk) -> dict:
    row = {"source_file": name, "status": "rejected"}
    if index in chunk.refused:
        reason, detail = chunk.refused[index]
        row.update(reason=reason, detail=detail)
        return row
    detection = chunk.detections[index]
    row.update(
        reason=detection.reason,
        detail="; ".join(part for part in (detection.detail, chunk.notes.get(index, "")) if part),
        probability="" if detection.probability is None else f"{detection.probability:.4f}",
        box=_fmt(detection.box),
        landmarks=_fmt(detection.landmarks, 2),
    )
    return row


@dataclass
class AlignTally:
    """Where the alignment stands, over every session of this run: a resumed run carries the interrupted
    sessions' counts on (the resume state holds them), so the report covers the whole run."""

    position: int = 0  # source images done (the next one's index in the ordered list)
    detected: int = 0  # faces MTCNN found, before the filters
    busy: Counter = field(default_factory=Counter)  # seconds per step, added over the workers
    elapsed_before: float = 0.0  # seconds of the interrupted sessions
    processed: int = 0  # source images done in this session
    started: float = field(default_factory=time.time)

    @classmethod
    def resumed(cls, state: dict) -> AlignTally:
        if not state.get("position"):
            return cls()
        return cls(
            position=int(state["position"]),
            detected=int(state.get("detected", 0)),
            busy=Counter(state.get("busy_s", {})),
            elapsed_before=float(state.get("elapsed_s", 0.0)),
        )

    @property
    def elapsed(self) -> float:
        return time.time() - self.started

    def checkpoint(self, writer: CacheWriter, manifest: _Manifest) -> None:
        writer.checkpoint(
            position=self.position,
            manifest_bytes=manifest.flush(),
            elapsed_s=self.elapsed_before + self.elapsed,
            detected=self.detected,
            busy_s=dict(self.busy),
        )


def checked_source(data: settings.DataSettings, raw_dir: Path) -> tuple[handoff.RawSource, list[str]]:
    """download's record and its ordered file list, refused when they are of another source or empty."""
    source = handoff.RawSource.read(raw_dir / "SOURCE.json")
    if source.source != data.source:
        raise UserError(f"{raw_dir} holds {source.source} but data.source={data.source}: run `dvc repro download`")
    files = ordered_files(raw_dir, source)
    if not files:
        raise UserError(f"{raw_dir} lists no images: run `dvc repro download`")
    return source, files


def align_into(
    runner: SequentialAlign | AlignWorkers,
    files: list[str],
    data: settings.DataSettings,
    writer: CacheWriter,
    manifest: _Manifest,
    tally: AlignTally,
    stop_after: int | None,
) -> None:
    """Align the files from `tally.position` on into the cache until it is full (or `stop_after` images),
    one manifest row a source image, saving the resume state every data.checkpoint_every images."""
    batch = data.mtcnn.batch_size
    chunks = [files[i : i + batch] for i in range(tally.position, len(files), batch)]
    since_checkpoint = 0
    desc = f"aligning faces ({runner.device}, {runner.workers} workers)"
    with tqdm(total=len(files), initial=tally.position, desc=desc, unit="img", disable=None) as bar:
        for chunk in runner.chunks(chunks if not writer.full else []):
            tally.busy.update(chunk.seconds)
            tally.detected += len(chunk.detections)
            for i, name in enumerate(chunk.names):
                if writer.full:
                    break
                row = _manifest_row(name, i, chunk)
                if i in chunk.faces:
                    row.update(status="kept", cache_index=writer.add(chunk.faces[i]))
                manifest.add(row)
                tally.position += 1
                tally.processed += 1
                since_checkpoint += 1
            bar.update(len(chunk.names))
            bar.set_postfix(kept=writer.count, refresh=False)
            if since_checkpoint >= data.checkpoint_every:
                tally.checkpoint(writer, manifest)
                since_checkpoint = 0
            if writer.full or (stop_after is not None and tally.processed >= stop_after):
                break
    tally.checkpoint(writer, manifest)


def alignment_report(
    data: settings.DataSettings,
    source: handoff.RawSource,
    files: list[str],
    manifest: _Manifest,
    tally: AlignTally,
    runner: SequentialAlign | AlignWorkers,
    resumed_from: int,
) -> dict:
    """reports/preprocess.json of a photograph source: what was kept and rejected, and the time it took."""
    elapsed = tally.elapsed
    counts = manifest.counts()
    kept = counts.pop("kept", 0)
    kept_grey = manifest.kept_grey_sources()
    report = {
        "source": source.source,
        "device": str(runner.device),
        "resolution": data.resolution,
        "num_faces_requested": data.num_faces,
        "considered": kept + sum(counts.values()),
        "kept": kept,
        "rejected": dict(sorted(counts.items())),
        # grey faces in a colour set: kept (as RGB) but counted, their manifest detail says GREY_SOURCE
        "kept_grey_sources": kept_grey,
        "source_images": len(files),
        "images_per_s": round(tally.processed / max(elapsed, 1e-9), 2),
        "elapsed_s": round(elapsed, 1),
        "elapsed_total_s": round(tally.elapsed_before + elapsed, 1),
        "resumed_from": resumed_from,
        "mtcnn": True,
        "workers": runner.workers,
        "mtcnn_fast_max_pools": runner.aligner.fast_max_pools,
        "detected": tally.detected,  # over all sessions, as busy_s
        # seconds spent on each step, added over the workers (which run side by side)
        "busy_s": {step: round(tally.busy[step], 2) for step in ("decode", "detect", "align")},
    }
    if kept_grey:
        log.warning("%d of the %d kept faces come from grey images (manifest detail %r)", kept_grey, kept, GREY_SOURCE)
    if kept < data.num_faces:
        log.warning("only %d faces accepted out of %d images (data.num_faces=%d)", kept, len(files), data.num_faces)
        report["short_of_num_faces"] = True
    return report


def preprocess(
    data: settings.DataSettings,
    raw_dir: Path,
    cache_dir: Path,
    report_path: Path,
    device=None,
    stop_after: int | None = None,
    workers: int | None = None,
) -> dict:
    """Build the face cache from data/raw (see the module docstring). Returns the report.

    `stop_after` (tests, benchmarks) stops after that many source images without publishing,
    leaving the resume state as an interruption would. `workers`: worker processes (None: one a CPU
    core, or the decoders a GPU needs; 0: the sequential reference path).
    """
    source, files = checked_source(data, raw_dir)
    if source.source == "synthetic":
        return preprocess_synthetic(data, source, files, cache_dir, report_path)

    from facegan.device import resolve_device

    device = torch.device(device or resolve_device(data.mtcnn.device))
    root = Path(source.image_root)
    if not root.is_dir():
        raise UserError(f"image folder {root} is gone: run `dvc repro download` (or fix data.folder)")
    workers = default_workers(device, data.mtcnn.cpu_threads) if workers is None else workers
    if workers < 0:
        raise UserError(f"workers={workers}: use 0 (sequential), a positive number, or None (one a core)")
    writer = CacheWriter(cache_dir, data.resolution, min(len(files), data.num_faces), _fingerprint(data, files, source))
    state = writer.resume_state()
    tally = AlignTally.resumed(state)
    resumed_from = tally.position
    if resumed_from:
        log.info("resuming preprocess at image %d of %d (%d faces kept so far)", resumed_from, len(files), writer.count)
    manifest = _Manifest(writer.work / PARTIAL_MANIFEST, state.get("manifest_bytes") if resumed_from else None)
    runner = SequentialAlign(data, device, root) if workers == 0 else AlignWorkers(data, device, root, workers)
    with runner:
        align_into(runner, files, data, writer, manifest, tally, stop_after)
    if stop_after is not None and not writer.full and tally.position < len(files):
        manifest.close()
        return {"interrupted_at": tally.position, "kept": writer.count}
    report = alignment_report(data, source, files, manifest, tally, runner, resumed_from)
    manifest.close()
    if writer.count == 0:
        raise UserError(
            f"no face was accepted among {len(files)} images: each one's rejection reason is in {manifest.path}; "
            "check data.source and the MTCNN thresholds (data.mtcnn.*) in params.yaml"
        )
    writer.finish(  # the cache and its manifest appear together
        source=source.source,
        synthetic=False,
        manifest=manifest.path,
        image_root=source.image_root,
        align=data.align.model_dump(),
        mtcnn=data.mtcnn.model_dump(exclude={"device"}),
    )
    write_json(report_path, report)
    return report
