"""Jet files from Pythia8 chunks: the chunk cache, parallel processes, shards, requests.

Work is split in fixed chunks of jets; Pythia is initialised once per process and reseeded from
(seed, chunk index) for each chunk (`pipelines.data.pythia.generate_chunk`). So the output
depends on the seed only, never on the number of processes or on which process generated which
chunk; chunks are cached on disk as they finish, so a repeated, larger or interrupted request
only generates what is missing.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from jetflows import interrupt
from jetflows.classes import JET_TYPES
from jetflows.errors import MissingFileError, UserError
from pipelines.data.jetnet import (
    Jets,
    check_num_particles,
    concat_jets,
    read_jetnet_file,
    stored,
    write_jetnet_file,
)
from pipelines.data.pythia import (
    PYTHIA_CACHE_VERSION,
    RECIPES,
    RENAMED_RECIPES,
    PythiaConfig,
    generate_chunk,
)
from pipelines.io import (
    atomic_path,
    available_memory,
    check_disk_space,
    check_writable,
    default_cache_dir,
    parse_json,
)


def _chunk_path(cache: Path, cfg: PythiaConfig, chunk: int) -> Path:
    return cache / "pythia" / cfg.key() / f"chunk_{chunk:06d}.npz"


def _load_chunk(path: Path) -> dict[str, np.ndarray] | None:
    """A cached chunk's arrays; None when it is missing, or damaged (truncated, empty, not a
    chunk, wrong shapes: then a warning says it is generated again)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in ("particles", "jet_features")}
    # damaged outside our atomic writes (a full disk, a copy cut short, a hand edit)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        warnings.warn(f"{path}: unreadable cache chunk ({err}); generating it again", stacklevel=2)
        return None
    pf, jf = arrays["particles"], arrays["jet_features"]
    if pf.ndim != 3 or jf.ndim != 2 or len(pf) != len(jf) or len(pf) == 0:
        shapes = f"{pf.shape} and {jf.shape}"
        warnings.warn(f"{path}: a chunk of shapes {shapes}; generating it again", stacklevel=2)
        return None
    return arrays


def _work(args: tuple[PythiaConfig, int, Path]) -> int:
    cfg, chunk, cache = args
    arrays = generate_chunk(cfg, chunk)
    with atomic_path(_chunk_path(cache, cfg, chunk)) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return chunk


def _die_with(parent: int) -> None:
    """Pool initializer: the worker gets SIGTERM when its parent dies (Linux prctl
    PR_SET_PDEATHSIG), so a SIGKILLed `data generate` leaves no workers running on and
    printing BrokenPipeError tracebacks; exits at once if the parent is already gone."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (AttributeError, OSError):  # not Linux: the pool's own shutdown must do
        return
    if os.getppid() != parent:  # died between the fork and the prctl
        os._exit(1)


def _run_parallel(tasks: list, jobs: int, step: Callable[[int], None]) -> None:
    if jobs == 1 or len(tasks) <= 1:
        for task in tasks:
            interrupt.check()  # between chunks: where a swallowed SIGTERM is raised again
            step(_work(task))
        return
    # spawn, not fork: the parent may hold torch threads; workers only need numpy + Pythia
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(jobs, len(tasks)), _die_with, (os.getpid(),)) as pool:
        for chunk in pool.imap_unordered(_work, tasks):
            interrupt.check()
            step(chunk)


def shard_chunks(n: int, chunk_size: int, shard: tuple[int, int]) -> range:
    """The chunks shard (i, N) of an n-jet request generates: a contiguous 1/N of them, so the
    shards' files concatenated in shard order are exactly the unsharded file."""
    i, count = shard
    if not 0 <= i < count:
        raise UserError(f"shard must be i/N with 0 <= i < N, got {i}/{count}")
    chunks = math.ceil(n / chunk_size)
    if count > chunks:
        raise UserError(f"{count} shards for {chunks} chunks of {chunk_size} jets: use fewer")
    return range(i * chunks // count, (i + 1) * chunks // count)


def generate_jets(
    cfg: PythiaConfig,
    n: int,
    *,
    num_particles: int = 30,
    jobs: int | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
) -> Jets:
    """``n`` jets of ``cfg.jet_class``, from the chunk cache or generated on ``jobs`` processes.

    Arguments:
        cfg: the generator configuration (class, seed, physics settings).
        n: number of jets, >= 1.
        num_particles: particles kept per jet, 1..150.
        jobs: processes (default: every core).
        cache_dir: chunk cache (default `default_cache_dir()`).
        progress: show a tqdm bar.
        shard: (i, N): only this shard's jets (`shard_chunks`), e.g. one machine of N.

    Returns:
        `Jets` with particles (n, P, 3) (phi_rel scaled by the recipe's phi_scale), mask (n, P),
        jet_features (n, 4) where n_particles
        counts every constituent of the jet (as JetNet's files do), labels (n,).
    """
    if n < 1:
        raise UserError(f"n must be >= 1, got {n}")
    num_particles = check_num_particles(num_particles)
    jobs = (os.cpu_count() or 1) if jobs is None else jobs
    if jobs < 1:
        raise UserError(f"jobs must be >= 1, got {jobs}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    chunks = shard_chunks(n, cfg.chunk_size, shard)
    loaded = {k: _load_chunk(_chunk_path(cache, cfg, k)) for k in chunks}
    missing = [(cfg, k, cache) for k, arrays in loaded.items() if arrays is None]
    with tqdm(
        total=len(missing) * cfg.chunk_size,
        disable=not progress or not missing,
        unit="jet",
        desc=f"pythia {cfg.jet_class}",
    ) as bar:

        def step(chunk: int) -> None:
            loaded[chunk] = _load_chunk(_chunk_path(cache, cfg, chunk))
            bar.update(cfg.chunk_size)

        _run_parallel(missing, jobs, step)
    size = min(n, chunks.stop * cfg.chunk_size) - chunks.start * cfg.chunk_size
    return _assemble([loaded[k] for k in chunks], size, num_particles, cfg)


def _assemble(chunks: list, n: int, num_particles: int, cfg: PythiaConfig) -> Jets:
    particles = np.concatenate([c["particles"] for c in chunks])[:n, :num_particles]
    features = np.concatenate([c["jet_features"] for c in chunks])[:n]
    mask = particles[..., 2] > 0
    phi_scale = RECIPES[cfg.recipe].phi_scale
    if phi_scale != 1.0:
        particles[..., 1] *= np.float32(phi_scale)
    return Jets(particles, mask, features, np.full(n, JET_TYPES.index(cfg.jet_class)))


def request_record(
    cfg: PythiaConfig, n: int, num_particles: int, shard: tuple[int, int] = (0, 1)
) -> str:
    """The JSON stored in a generated file's attributes: what exactly it holds."""
    record = {
        **asdict(cfg),
        "n": n,
        "num_particles": num_particles,
        "generator_version": PYTHIA_CACHE_VERSION,
    }
    if shard != (0, 1):
        record["shard"] = list(shard)
    return json.dumps(record, sort_keys=True)


def _stored_request(path: Path) -> str | None:
    try:
        with h5py.File(path, "r") as f:
            return str(f.attrs.get("jetflows_request", ""))
    except OSError:
        return None


#: Bytes per jet: in the cache (150 particles x 3 + 4 jet features, float32), in memory and
#: in the file (P particles x 4 + 4, float32).
CACHE_BYTES_PER_JET = (150 * 3 + 4) * 4


def _check_size(
    n: int, shard: tuple[int, int], num_particles: int, out: Path, cache_dir: str | Path | None
) -> None:
    """Refuse at once a request whose jets cannot fit in memory, the file or the cache (it
    hung without output: 10^12 jets are ~10^10 chunks to plan before the first is made)."""
    jets = -(-n // shard[1])
    held, free = jets * (num_particles * 4 + 4) * 4, available_memory()
    if held > free:
        raise UserError(
            f"{jets} jets would need {held / 1e9:.3g} GB of memory, "
            f"{free / 1e9:.3g} GB are available: ask for fewer (or split the "
            "request with --shard)"
        )
    check_disk_space(out, held)
    check_disk_space(Path(cache_dir or default_cache_dir()) / "chunk", jets * CACHE_BYTES_PER_JET)


def _generate_into(
    cfg: PythiaConfig,
    n: int,
    out: Path,
    *,
    overwrite: bool,
    shard: tuple[int, int],
    **generate: Any,
) -> Jets | None:
    """Generate the request into ``out``; None when ``out`` already holds exactly it.
    ``generate``: `generate_jets`'s num_particles, jobs, cache_dir, progress."""
    record = request_record(cfg, n, check_num_particles(generate["num_particles"]), shard)
    if out.is_file() and _stored_request(out) == record:
        return None
    check_writable(out, overwrite=overwrite)
    _check_size(n, shard, generate["num_particles"], out, generate["cache_dir"])
    jets = generate_jets(cfg, n, shard=shard, **generate)
    write_jetnet_file(out, jets, _attributes(record, cfg.recipe))
    return jets


def generate_file(
    cfg: PythiaConfig,
    n: int,
    out: str | Path,
    *,
    num_particles: int = 30,
    jobs: int | None = None,
    overwrite: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
) -> tuple[Path, bool]:
    """Generate ``n`` jets (or shard (i, N) of them) into the JetNet-layout file ``out``.

    A file that already holds exactly this request is kept as it is (the same request twice
    generates once); any other existing file needs ``overwrite``. `merge_shards` joins the N
    shard files into the file the unsharded request writes.

    Returns:
        (path, whether anything was written).
    """
    out = Path(out)
    generate = {"num_particles": num_particles, "jobs": jobs, "cache_dir": cache_dir}
    jets = _generate_into(
        cfg, n, out, overwrite=overwrite, shard=shard, progress=progress, **generate
    )
    return out, jets is not None


def request_jets(
    cfg: PythiaConfig,
    n: int,
    out: str | Path,
    *,
    num_particles: int = 30,
    jobs: int | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> Jets:
    """The ``n`` jets of this request as `read_jetnet_file` returns them from ``out``: read from
    ``out`` when it already holds exactly this request, else generated, written there
    (replacing any other file) and passed on from memory."""
    out = Path(out)
    generate = {"num_particles": num_particles, "jobs": jobs, "cache_dir": cache_dir}
    jets = _generate_into(cfg, n, out, overwrite=True, shard=(0, 1), progress=progress, **generate)
    return read_jetnet_file(out) if jets is None else stored(jets, out)


#: The phi_rel attribute of a file whose phi_rel is delta phi / pi (`fpnd-matched`).
COMPRESSED_PHI = "delta phi / pi (compressed, not radians)"


def _attributes(record: str, recipe: str) -> dict[str, str]:
    """A generated file's attributes: the request, the source and the recipe in words."""
    recipe = RENAMED_RECIPES.get(recipe, recipe)  # shards written before the rename
    unit = "radians" if RECIPES[recipe].phi_scale == 1.0 else COMPRESSED_PHI
    return {
        "jetflows_request": record,
        "source": "Pythia8 + FastJet (jetflows)",
        "recipe": f"{recipe}: {RECIPES[recipe].summary}",
        "phi_rel": unit,
    }


def merge_shards(paths: Sequence[str | Path], out: str | Path, *, overwrite: bool = False) -> Path:
    """Join the N shard files of one request (any order) into ``out``: identical to the file
    the unsharded request writes, attributes included.

    Raises:
        ValueError: files from different requests, a missing or repeated shard, not shards.
    """
    records = []
    for path in paths:
        if not Path(path).is_file():
            raise MissingFileError(f"{path}: no such file")
        request = _stored_request(Path(path))
        if not request:
            raise UserError(f"{path}: not a file written by `jetflows data generate`")
        records.append(parse_json(request, f"{path} (its request attribute)"))
    shards = [tuple(r.pop("shard", (0, 1))) for r in records]
    if any(r != records[0] for r in records):
        raise UserError("the files come from different generation requests")
    count = shards[0][1]
    if sorted(shards) != [(i, count) for i in range(count)]:
        raise UserError(f"need each of the {count} shards exactly once, got {sorted(shards)}")
    check_writable(Path(out), overwrite=overwrite)
    order = [paths[shards.index((i, count))] for i in range(count)]
    jets = concat_jets([read_jetnet_file(p) for p in order])
    record = json.dumps(records[0], sort_keys=True)
    return write_jetnet_file(out, jets, _attributes(record, records[0].get("recipe", "particle")))
