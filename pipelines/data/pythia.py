"""The embedded default data: jets from Pythia8 + FastJet, following JetNet's recipe.

pp at 13 TeV with the Monash tune; one hard process per class with its hard-process pT in a
narrow window around 1 TeV (JetNet: delta pt / pt = 0.01); anti-kT R = 0.8 on what the recipe
clusters (`RECIPES`: every visible final-state particle, or a simplified detector's objects);
per event, the first jet with 0.8 < pT < 1.6 TeV that carries a hard object of the class (for t,
W, Z: within R of the resonance and holding all its decay quarks). Each jet keeps its 150
hardest constituents; files are cut to the requested count. The default recipe, `particle`,
stores phi_rel in radians; `fpnd-matched` compresses it to delta phi / pi, which brings FPND
against JetNet's statistics closest (an inference, not JetNet's documentation: see `RECIPES`).

This module holds the physics: process cards, detector recipes and the jet selection, up to
one chunk of jets (`generate_chunk`). Producing files from chunks (the cache, processes, shards)
is `pipelines.data.jetnet.production`.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np

from jetflows.classes import canonical_class
from jetflows.errors import UserError
from jetflows.physics import wrap_phi
from pipelines.data.jetnet import (
    MAX_PARTICLES,
)
from pipelines.io import (
    stable_hash,
)

PYTHIA_CACHE_VERSION = 2  # bump when a change alters the jets, so stale caches are not reused

_HADRONIC = "1 2 3 4 5"
#: Pythia settings of the hard process per class (bosons and tops decay hadronically).
PROCESSES: dict[str, tuple[str, ...]] = {
    "g": ("HardQCD:gg2gg = on", "HardQCD:qqbar2gg = on"),
    "q": ("HardQCD:qq2qq = on", "HardQCD:qqbar2qqbarNew = on", "HardQCD:nQuarkNew = 3"),
    "t": (
        "Top:gg2ttbar = on",
        "Top:qqbar2ttbar = on",
        "24:onMode = off",
        f"24:onIfAny = {_HADRONIC}",
    ),
    "w": (
        "WeakBosonAndParton:qqbar2Wg = on",
        "WeakBosonAndParton:qg2Wq = on",
        "24:onMode = off",
        f"24:onIfAny = {_HADRONIC}",
    ),
    "z": (
        "WeakBosonAndParton:qqbar2gmZg = on",
        "WeakBosonAndParton:qg2gmZq = on",
        "WeakZ0:gmZmode = 2",
        "23:onMode = off",
        f"23:onIfAny = {_HADRONIC}",
    ),
}
#: |PDG id| of the hard object each class's jet must carry (g: gluon; q: u, d, s quarks).
HARD_OBJECTS: dict[str, frozenset[int]] = {
    "g": frozenset({21}),
    "q": frozenset({1, 2, 3}),
    "t": frozenset({6}),
    "w": frozenset({24}),
    "z": frozenset({23}),
}


#: Columns of the final-state table a recipe's detector reads: four-momentum [GeV], whether the
#: particle is charged (1/0), |PDG id|.
FINAL_STATE = ("px", "py", "pz", "e", "charged", "pid")
_PHOTON = 22


def _final_state(pythia: object) -> np.ndarray:
    """(N, 6) table (`FINAL_STATE`) of the event's visible final-state particles (no neutrinos)."""
    # particles() copies the record once: ~20% faster than indexing the event per particle
    rows = [
        (p.px(), p.py(), p.pz(), p.e(), float(p.isCharged()), float(p.idAbs()))
        for p in pythia.event.particles()
        if p.isFinal() and p.isVisible()
    ]
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(FINAL_STATE))


def every_particle(final_state: np.ndarray) -> np.ndarray:
    """Particle level: each visible final-state particle as it is.

    Arguments:
        final_state: (N, 6) `FINAL_STATE` table.

    Returns:
        (N, 4) (px, py, pz, e) the jets are clustered from.
    """
    return final_state[:, :4]


def calorimeter_cells(momenta: np.ndarray, cell: float) -> np.ndarray:
    """Deposit particles in square (eta, phi) cells of side ``cell``: each hit cell becomes one
    massless object at its centre carrying the summed energy (no resolution smearing).

    Arguments:
        momenta: (N, 4) (px, py, pz, e).
        cell: cell side in eta and in phi [rad]; phi is split into round(2 pi / cell) cells.

    Returns:
        (M, 4) (px, py, pz, e), M <= N, one row per hit cell.
    """
    # written here: FastJet has no calorimeter and Delphes (which has) is not on PyPI
    if len(momenta) == 0:
        return momenta.reshape(0, 4)
    px, py, pz, e = momenta.T
    eta = np.arcsinh(pz / np.hypot(px, py))
    n_phi = round(2 * np.pi / cell)
    i_eta = np.floor(eta / cell).astype(np.int64)
    i_phi = np.floor((np.arctan2(py, px) + np.pi) / (2 * np.pi) * n_phi).astype(np.int64) % n_phi
    cells, index = np.unique(np.stack([i_eta, i_phi], 1), axis=0, return_inverse=True)
    energy = np.bincount(index.ravel(), weights=e)
    centre_eta = (cells[:, 0] + 0.5) * cell
    centre_phi = (cells[:, 1] + 0.5) * (2 * np.pi / n_phi) - np.pi
    pt = energy / np.cosh(centre_eta)
    return np.stack(
        [pt * np.cos(centre_phi), pt * np.sin(centre_phi), pt * np.sinh(centre_eta), energy], 1
    )


def simplified_detector(final_state: np.ndarray, *, ecal: float, hcal: float) -> np.ndarray:
    """A particle-flow-like detector without resolution: charged particles as tracks (exact
    momenta), photons summed in ECAL cells, neutral hadrons in HCAL cells.

    Arguments:
        final_state: (N, 6) `FINAL_STATE` table (neutrinos already removed).
        ecal, hcal: cell sides in (eta, phi).

    Returns:
        (M, 4) (px, py, pz, e): tracks, then ECAL cells, then HCAL cells.
    """
    charged = final_state[:, 4] > 0
    photon = ~charged & (final_state[:, 5] == _PHOTON)
    return np.concatenate(
        [
            final_state[charged, :4],
            calorimeter_cells(final_state[photon, :4], ecal),
            calorimeter_cells(final_state[~charged & ~photon, :4], hcal),
        ]
    )


#: What jets can be clustered from: (N, 6) `FINAL_STATE` table -> (M, 4) (px, py, pz, e).
DETECTORS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "particle": every_particle,
    # cell sizes from the name of the hls4ml file JetNet derives from ("..._h022_e0175_..."):
    # ECAL 0.0175 (CMS-like), HCAL 0.022 (4x finer than CMS's 0.087)
    "detector": partial(simplified_detector, ecal=0.0175, hcal=0.022),
}


@dataclass(frozen=True)
class Recipe:
    """What jets are clustered from and how their particles are stored.

    Arguments:
        inputs: a key of `DETECTORS`; recipes with the same inputs share cached chunks.
        summary: one line for --help and the README.
        phi_scale: stored phi_rel = phi_scale * (phi - phi_jet), the difference wrapped to
            (-pi, pi]; 1: radians; 1/pi: JetNet's stored convention (see `RECIPES`).
    """

    inputs: str
    summary: str
    phi_scale: float = 1.0


RECIPES: dict[str, Recipe] = {
    "particle": Recipe("particle", "every visible final-state particle, phi_rel in radians"),
    # JetNet's stored phi_rel is not an azimuth in radians: over its jets |phi_rel| <= 0.521
    # (jetnet's JetNet.fpnd_norm) while anti-kT R = 0.8 jets reach |delta phi| ~0.9 and its
    # |eta_rel| reaches 1.621. FPND against jetnet's statistics prefers our delta phi
    # compressed by 0.25-0.40 for g, q and t, ~3x lower at 1/pi (a slip of units): so delta phi
    # / pi (inferred, not documented; docs/data.md "The embedded data and JetNet").
    "fpnd-matched": Recipe(
        "particle",
        "as particle, but phi_rel stored compressed as delta phi / pi (not an azimuth: masses "
        "and substructure from these particles are not the jet's), which matches FPND's JetNet "
        "statistics best",
        phi_scale=1 / np.pi,
    ),
    "detector": Recipe(
        "detector",
        "tracks + photons in ECAL cells 0.0175 + neutral hadrons in HCAL cells 0.022, radians",
    ),
}
DEFAULT_RECIPE = "particle"
#: Former recipe names: refused with the new name (files written under them still merge).
RENAMED_RECIPES = {"jetnet": "fpnd-matched"}


def check_recipe(recipe: str, what: str = "recipe") -> None:
    """ValueError unless ``recipe`` is a key of `RECIPES`; a former name is told its new one."""
    if recipe in RENAMED_RECIPES:
        raise UserError(
            f"{what} {recipe!r} is now called {RENAMED_RECIPES[recipe]!r} (phi_rel stored as "
            "delta phi / pi); 'particle' (radians) is the default"
        )
    if recipe not in RECIPES:
        raise UserError(f"unknown {what} {recipe!r}: use one of {sorted(RECIPES)}")


@dataclass(frozen=True)
class PythiaConfig:
    """What to generate; every field enters the cache key.

    Arguments:
        jet_class: g, q, t, w or z.
        seed: base seed; chunk k is seeded from (seed, k).
        pt: hard-process pT centre [GeV].
        pt_window: relative full width of the hard-process pT window (JetNet: 0.01).
        ecm: centre-of-mass energy [GeV].
        radius: anti-kT radius R.
        jet_pt_min, jet_pt_max: accepted jet pT range [GeV].
        mpi: multiparton interactions (the underlying event) on or off.
        recipe: what jets are clustered from, a key of `RECIPES`.
        chunk_size: jets per independently seeded chunk.
    """

    jet_class: str
    seed: int = 42
    pt: float = 1000.0
    pt_window: float = 0.01
    ecm: float = 13000.0
    radius: float = 0.8
    jet_pt_min: float = 800.0
    jet_pt_max: float = 1600.0
    mpi: bool = True
    recipe: str = DEFAULT_RECIPE
    chunk_size: int = 100

    def __post_init__(self) -> None:
        object.__setattr__(self, "jet_class", canonical_class(self.jet_class))
        check_recipe(self.recipe)
        if self.chunk_size < 1:
            raise UserError(f"chunk_size must be >= 1, got {self.chunk_size}")

    def key(self) -> str:
        """A short hash of the configuration and generator version, naming the cache."""
        fields = asdict(self)
        # chunks hold what the detector saw, before the recipe's phi_scale; particle-level
        # chunks keep the key they had before recipes existed
        inputs = RECIPES[fields.pop("recipe")].inputs
        if inputs != "particle":
            fields["inputs"] = inputs
        return stable_hash({**fields, "version": PYTHIA_CACHE_VERSION})

    def chunk_seed(self, chunk: int | None = None) -> int:
        """Pythia seed (1..900,000,000) of chunk ``chunk`` (None: the one used at init)."""
        # [seed, 0] for init, [seed, k + 1] for chunks: SeedSequence pads entropy with zeros
        entropy = [self.seed, 0 if chunk is None else chunk + 1]
        return int(np.random.SeedSequence(entropy).generate_state(1)[0]) % 900_000_000 + 1

    def pythia_settings(self) -> list[str]:
        """Pythia's settings; each chunk then reseeds the generator with `chunk_seed`."""
        half = self.pt * self.pt_window / 2
        return [
            f"Beams:eCM = {self.ecm}",
            "Tune:pp = 14",  # 14 = Monash 2013
            f"PhaseSpace:pTHatMin = {self.pt - half}",
            f"PhaseSpace:pTHatMax = {self.pt + half}",
            # off (the default) keeps Pythia's state fixed after init, so a chunk's jets
            # depend on its seed only, not on the chunks the same process generated before
            "PhaseSpace:increaseMaximum = off",
            f"PartonLevel:MPI = {'on' if self.mpi else 'off'}",
            "Random:setSeed = on",
            f"Random:seed = {self.chunk_seed()}",  # for init only
            "Next:numberCount = 0",
            "Print:quiet = on",
            *PROCESSES[self.jet_class],
        ]


def _delta_r(eta1: float, phi1: float, eta2: float, phi2: float) -> float:
    return math.hypot(eta1 - eta2, float(wrap_phi(np.float64(phi1 - phi2))))


def _hard_objects(process: object, ids: frozenset[int]) -> list[tuple[float, float, list]]:
    """(eta, phi, decay-quark directions) of each hard object of the class in the process record.

    Partons (g, q) are the outgoing ones of the hard process; resonances (t, W, Z) come with the
    final quarks of their decay chain (t -> W b -> q q' b), all in the same process record.
    """
    found = []
    for p in process:
        if p.idAbs() not in ids or (p.isParton() and not p.isFinal()):
            continue
        quarks = [process[i] for i in p.daughterListRecursive()] if p.isResonance() else []
        quarks = [(q.eta(), q.phi()) for q in quarks if q.isQuark() and q.isFinal()]
        found.append((p.eta(), p.phi(), quarks))
    return found


def _select_jet(jets: list, objects: list, cfg: PythiaConfig) -> object | None:
    """The first jet in the pT range carrying a hard object and all its decay quarks."""
    for eta, phi, quarks in objects:
        for jet in jets:
            if not cfg.jet_pt_min < jet.pt() < cfg.jet_pt_max:
                continue
            near = [(eta, phi), *quarks]
            if all(_delta_r(jet.eta(), jet.phi_std(), e, f) < cfg.radius for e, f in near):
                return jet
    return None


def _jet_arrays(jet: object) -> tuple[np.ndarray, np.ndarray]:
    """(150, 3) pt-sorted (eta_rel, phi_rel, pt_rel) zero-padded, and (pt, eta, mass, n)."""
    cons = np.array([[c.eta(), c.phi_std(), c.pt()] for c in jet.constituents()])
    n_constituents = len(cons)
    cons = cons[np.argsort(-cons[:, 2])][:MAX_PARTICLES]
    rel = np.stack(
        [cons[:, 0] - jet.eta(), wrap_phi(cons[:, 1] - jet.phi_std()), cons[:, 2] / jet.pt()], -1
    )
    particles = np.zeros((MAX_PARTICLES, 3), np.float32)
    particles[: len(rel)] = rel
    features = np.array([jet.pt(), jet.eta(), jet.m(), n_constituents], np.float32)
    return particles, features


_PYTHIAS: dict[str, tuple[object, object]] = {}  # per process: config key -> (Pythia, jet def)


def _initialised(cfg: PythiaConfig) -> tuple[object, object]:
    """One initialised Pythia per process and configuration: init takes ~0.4 s, a reseed none."""
    if cfg.key() not in _PYTHIAS:
        import fastjet
        import pythia8mc

        pythia = pythia8mc.Pythia("", False)
        for line in cfg.pythia_settings():
            pythia.readString(line)
        if not pythia.init():
            raise RuntimeError(f"Pythia failed to initialise for class {cfg.jet_class}")
        jet_def = fastjet.JetDefinition(fastjet.antikt_algorithm, cfg.radius)
        _silence_banner(fastjet, jet_def)
        _PYTHIAS[cfg.key()] = pythia, jet_def
    return _PYTHIAS[cfg.key()]


def _silence_banner(fastjet: Any, jet_def: object) -> None:
    """Spend FastJet's 12-line banner, printed to stdout at a process's first clustering, on
    /dev/null: every worker printed it into the output. (Its Python bindings do not expose
    `set_fastjet_banner_stream`; the README cites FastJet, as the banner asks.)"""
    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        fastjet.ClusterSequence([fastjet.PseudoJet(1.0, 0.0, 0.0, 2.0)], jet_def)
        ctypes.CDLL(None).fflush(None)  # C++ cout writes through C stdio: flush it here
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def generate_chunk(cfg: PythiaConfig, chunk: int) -> dict[str, np.ndarray]:
    """Generate chunk ``chunk``: ``cfg.chunk_size`` jets from Pythia reseeded for that chunk.

    Returns:
        {"particles": (chunk_size, 150, 3), "jet_features": (chunk_size, 4)}, phi_rel in
        radians whatever the recipe (its phi_scale is applied when chunks are assembled).
    """
    import fastjet

    pythia, jet_def = _initialised(cfg)
    pythia.rndm.init(cfg.chunk_seed(chunk))
    detect = DETECTORS[RECIPES[cfg.recipe].inputs]
    ids, out, tries = HARD_OBJECTS[cfg.jet_class], [], 0
    while len(out) < cfg.chunk_size:
        tries += 1
        if tries > 100 * cfg.chunk_size + 1000:
            raise RuntimeError(f"{cfg.jet_class}: almost no events give an accepted jet")
        if not pythia.next():
            continue
        # tolist(): Python floats in one call, not a float() per value of each numpy row
        inputs = [fastjet.PseudoJet(*row) for row in detect(_final_state(pythia)).tolist()]
        sequence = fastjet.ClusterSequence(inputs, jet_def)
        jet = _select_jet(
            fastjet.sorted_by_pt(sequence.inclusive_jets(0.5 * cfg.jet_pt_min)),
            _hard_objects(pythia.process, ids),
            cfg,
        )
        if jet is not None:
            out.append(_jet_arrays(jet))
    particles, features = (np.stack(a) for a in zip(*out, strict=True))
    return {"particles": particles, "jet_features": features}
