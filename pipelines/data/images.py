"""Sparse images as point clouds: digits kept as their k most intense pixels, stored as (x, y, I)
rows in the jets' HDF5 layout, as the research code's sparse MNIST did (k = 100, also 25).

Two sources, both offline:
- ``mnist``: the MNIST IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each gzipped or not) in a folder;
  nothing is downloaded.
- ``digits`` (the embedded default): digits drawn here, seeded, as glyphs of the DejaVu and
  STIX fonts shipped with matplotlib, at random stroke widths, sizes and affine distortions
  (rotation, shear, scale, shift), rendered at 2x and averaged down to 28 x 28.

File layout (`write_image_file`): ``particle_features`` (N, k, 4) = (x, y, I, mask) with x, y the
pixel centre in [0, 1] (x to the right, y down, as the image is drawn) and I in (0, 1], sorted
by intensity; ``jet_features`` (N, 4) = (lit pixels kept, their summed intensity, the digit,
0); attributes ``source``, ``digit``, ``pixels``. `pipelines.data.jetnet.read_jetnet_file` reads it.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from jetflows.errors import MissingFileError, UserError
from pipelines.data.jetnet import Jets, write_jetnet_file

SIDE = 28  # MNIST's images are 28 x 28
SOURCES = ("digits", "mnist")
#: MNIST's file stems per part: (images, labels)
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: the fonts of the embedded digits (matplotlib ships them)
FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralItalic.ttf",
)


def check_digit(digit: int) -> int:
    """``digit`` if it is 0-9, else ValueError."""
    if not 0 <= int(digit) <= 9:
        raise UserError(f"digit must be 0-9, got {digit}")
    return int(digit)


def check_pixels(k: int, name: str = "pixels") -> int:
    """``k`` if it is a pixel count of a 28 x 28 image (1..784), else ValueError naming
    ``name`` (the option or key the user set)."""
    if not 1 <= int(k) <= SIDE * SIDE:
        raise UserError(f"{name} must be in 1..{SIDE * SIDE} (a 28 x 28 image), got {k}")
    return int(k)


# ------------------------------------------------------------------------------------ MNIST


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a uint8 array: (N, 28, 28) images or (N,) labels.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an unsigned-byte IDX file, or truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise UserError(f"{path}: not a readable IDX file: {err}") from err
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise UserError(f"{path}: not an IDX file of unsigned bytes (magic {raw[:4].hex()})")
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims)
    if data.size != int(np.prod(shape)):
        raise UserError(f"{path}: holds {data.size} bytes for shape {shape} (truncated?)")
    return data.reshape(shape)


def _idx_path(directory: Path, stem: str) -> Path:
    for name in (stem, f"{stem}.gz"):
        if (directory / name).is_file():
            return directory / name
    raise MissingFileError(
        f"{directory / stem}[.gz]: no such file; put MNIST's four IDX files "
        f"({', '.join(s for pair in IDX_FILES.values() for s in pair)}, gzipped or not) in "
        f"{directory}, or use --source digits (drawn here, no files needed)"
    )


def mnist_digits(directory: str | Path, digit: int) -> np.ndarray:
    """Every MNIST image of ``digit`` (train, then t10k) as floats in [0, 1]: (N, 28, 28)."""
    directory, digit = Path(directory), check_digit(digit)
    parts = []
    for images_stem, labels_stem in IDX_FILES.values():
        images = read_idx(_idx_path(directory, images_stem))
        labels = read_idx(_idx_path(directory, labels_stem))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UserError(
                f"{directory}: {images_stem} {images.shape} and {labels_stem} {labels.shape} "
                "do not pair up as (N, 28, 28) images with (N,) labels"
            )
        parts.append(images[labels == digit])
    return np.concatenate(parts).astype(np.float32) / 255.0


# ------------------------------------------------------------------------- embedded digits


def _font(name: str, size: int):
    import matplotlib
    from PIL import ImageFont

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts/ttf" / name), size)


def _glyph(digit: int, rng: np.random.Generator) -> np.ndarray:
    """One digit drawn at 56 x 56 with a random font, size and stroke, then distorted."""
    from PIL import Image, ImageDraw

    big = 2 * SIDE
    canvas = Image.new("L", (big, big), 0)
    font = _font(FONTS[rng.integers(len(FONTS))], int(rng.integers(34, 46)))
    ImageDraw.Draw(canvas).text(
        (big / 2, big / 2),
        str(digit),
        fill=255,
        font=font,
        anchor="mm",
        stroke_width=int(rng.integers(0, 3)),
        stroke_fill=255,
    )
    angle, shear = np.radians(rng.uniform(-15, 15)), rng.uniform(-0.3, 0.3)
    scale, shift = rng.uniform(0.85, 1.1), rng.uniform(-3, 3, 2)
    c, s = np.cos(angle) / scale, np.sin(angle) / scale
    # PIL maps each output pixel (x, y) to the input pixel (a x + b y + c, d x + e y + f): a
    # small rotation, shear and scale about the centre, and a shift
    matrix = np.array([[c, -s + shear * c], [s, c + shear * s]])
    centre = np.array([big / 2, big / 2])
    offset = centre - matrix @ (centre + shift)
    coefficients = (*matrix[0], offset[0], *matrix[1], offset[1])
    image = canvas.transform(
        (big, big), Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR
    )
    pixels = np.asarray(image, dtype=np.float32).reshape(SIDE, 2, SIDE, 2).mean((1, 3))
    return pixels / max(float(pixels.max()), 1.0)


def render_digits(digit: int, n: int, *, seed: int = 0) -> np.ndarray:
    """``n`` drawn images of ``digit`` as floats in [0, 1]: (n, 28, 28); the same seed, the
    same images."""
    digit = check_digit(digit)
    if n < 1:
        raise UserError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng([seed, digit])
    return np.stack([_glyph(digit, rng) for _ in range(n)])


# ------------------------------------------------------------------------- sparse clouds


def sparse_pixels(images: np.ndarray, k: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Each image's ``k`` most intense pixels as (x, y, I) rows, brightest first.

    images: (N, H, W) in [0, 1]. Returns points (N, k, 3) with x, y the pixel centres in
    [0, 1] and a mask (N, k): False for the rows of an image with fewer than k lit pixels.
    Pixels of equal intensity (a stroke's saturated core) are taken in a seeded random order:
    by index, k = 25 would keep the top rows of a digit and drop its bottom.
    """
    n, height, width = images.shape
    if not 1 <= k <= height * width:
        raise UserError(f"k must be in 1..{height * width} (the pixels of an image), got {k}")
    flat = images.reshape(n, -1)
    ties = np.random.default_rng(seed).random(flat.shape)
    order = np.lexsort((ties, -flat), axis=-1)[:, :k]  # by intensity, ties at random
    intensity = np.take_along_axis(flat, order, 1)
    rows, cols = np.divmod(order, width)
    points = np.stack([(cols + 0.5) / width, (rows + 0.5) / height, intensity], -1)
    mask = intensity > 0
    return (points * mask[..., None]).astype(np.float32), mask


def image_jets(images: np.ndarray, k: int, digit: int, *, seed: int = 0) -> Jets:
    """Sparse clouds of ``images`` in the jets' container (`write_image_file`'s layout)."""
    points, mask = sparse_pixels(images, k, seed=seed)
    features = np.stack(
        [mask.sum(1), points[..., 2].sum(1), np.full(len(mask), digit), np.zeros(len(mask))], 1
    ).astype(np.float32)
    return Jets(points, mask, features, np.full(len(mask), -1))


def write_image_file(out: str | Path, jets: Jets, *, source: str, digit: int, pixels: int) -> Path:
    """Write sparse image clouds in the jets' HDF5 layout (see the module), atomically."""
    attrs = {"source": source, "digit": digit, "pixels": pixels, "coordinates": "x, y, I"}
    return write_jetnet_file(out, jets, attrs)
