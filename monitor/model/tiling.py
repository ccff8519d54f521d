"""Tiling geometry: where the overlapping tiles of an image lie, cutting an image into them, stitching back.

Pure NumPy, no TensorFlow, so the geometry is tested on its own. An image larger than the model input is
scored in tiles of the model input's size at the *working resolution* (the image resized by the bundle's
`tiling.scale`), so a defect of a few pixels keeps its pixels instead of being averaged away by a resize.

- Tiles start every `stride` pixels along each axis; the last row and column are moved back to end exactly
  at the image's edge, so every pixel is covered and no tile reaches outside the image.
- An image smaller than a tile is reflect-padded (mirrored at its bottom and right edges) up to one tile. A
  resize up would change the pixel scale the model was trained at (a defect would grow, the texture would
  coarsen, both unlike anything in training); mirrored content keeps the scale and looks like more of the
  same surface, where a constant border would be an edge the model never saw. Stitched results are cropped
  back to the real image, so the padding never shows in an error map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Size = tuple[int, int]  # height, width


def default_stride(tile: Size) -> Size:
    """Half a tile along each axis (at least 1): every pixel is seen by up to four tiles, away from borders."""
    return max(1, tile[0] // 2), max(1, tile[1] // 2)


def working_size(height: int, width: int, scale: float) -> Size:
    """The image size at working resolution: each side times `scale`, rounded, at least 1 pixel."""
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def tile_count(length: int, tile: int, stride: int) -> int:
    """Tiles along one axis: 1 when the image fits in one tile, else ceil((length - tile) / stride) + 1."""
    if length <= tile:
        return 1
    return math.ceil((length - tile) / stride) + 1


def axis_starts(length: int, tile: int, stride: int) -> tuple[int, ...]:
    """Tile start offsets along one axis: 0, stride, 2 x stride, ..., the last one at length - tile."""
    if tile < 1 or stride < 1:
        raise ValueError(f"tile and stride must be at least 1, got tile={tile} stride={stride}")
    if stride > tile:
        raise ValueError(f"stride {stride} is larger than the tile {tile}: pixels between tiles would be skipped")
    if length <= tile:
        return (0,)
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:  # aligned to the end: the last tile overlaps its neighbour more
        starts.append(length - tile)
    return tuple(starts)


@dataclass(frozen=True)
class TileGrid:
    """The tiles of one image: its size at working resolution, the tile size and each tile's top-left corner.

    `padded` is the size the tiles are cut from: the image itself, or one tile where the image is smaller
    (reflect-padded by `pad`).
    """

    height: int
    width: int
    tile: Size
    stride: Size
    rows: tuple[int, ...]
    cols: tuple[int, ...]

    @property
    def padded(self) -> Size:
        return max(self.height, self.tile[0]), max(self.width, self.tile[1])

    @property
    def positions(self) -> list[Size]:
        """Top-left corners (y, x), row by row."""
        return [(y, x) for y in self.rows for x in self.cols]

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)


def tile_grid(height: int, width: int, tile: Size, stride: Size | None = None) -> TileGrid:
    """The grid of tiles of size `tile` (h, w) over an image of height x width, `stride` apart (default half)."""
    stride = default_stride(tile) if stride is None else stride
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    return TileGrid(height, width, (int(tile[0]), int(tile[1])), (int(stride[0]), int(stride[1])),
                    axis_starts(height, tile[0], stride[0]), axis_starts(width, tile[1], stride[1]))


def pad(image: np.ndarray, grid: TileGrid) -> np.ndarray:
    """The image mirrored at its bottom and right edges up to at least one tile (itself when large enough)."""
    ph, pw = grid.padded
    h, w = image.shape[:2]
    if (h, w) != (grid.height, grid.width):
        raise ValueError(f"image of {h}x{w} does not match its grid of {grid.height}x{grid.width}")
    if (ph, pw) == (h, w):
        return image
    widths = [(0, ph - h), (0, pw - w)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, widths, mode="symmetric")  # numpy repeats the mirror where the pad exceeds the image


def split(image: np.ndarray, grid: TileGrid) -> np.ndarray:
    """All tiles of the image (HxW or HxWxC) as one N x th x tw (x C) array, in `grid.positions` order."""
    padded = pad(image, grid)
    th, tw = grid.tile
    return np.stack([padded[y:y + th, x:x + tw] for y, x in grid.positions])


def coverage(grid: TileGrid) -> np.ndarray:
    """How many tiles cover each pixel of the padded image (float32; at least 1 everywhere)."""
    count = np.zeros(grid.padded, np.float32)
    th, tw = grid.tile
    for y, x in grid.positions:
        count[y:y + th, x:x + tw] += 1.0
    return count


class TileCanvas:
    """Stitches one image's tile results back together as they arrive, in any order.

    Reconstructions are averaged where tiles overlap (a smooth seam); error maps take the maximum, so a
    defect on a tile border keeps its full error instead of being halved by a neighbour that missed it;
    the image score is the worst tile's score.
    """

    def __init__(self, grid: TileGrid, channels: int | None = None) -> None:
        self.grid = grid
        shape = grid.padded if channels is None else (*grid.padded, channels)
        self._sum = np.zeros(shape, np.float32)
        self._max = np.full(grid.padded, -np.inf, np.float32)
        self._scores = np.full(len(grid), np.nan, np.float64)
        self._positions = grid.positions

    def add(self, k: int, tile: np.ndarray | None = None, error_map: np.ndarray | None = None,
            score: float | None = None) -> None:
        """Tile k's reconstruction (averaged), error map (maximum) and score (maximum); each optional."""
        y, x = self._positions[k]
        th, tw = self.grid.tile
        if tile is not None:
            self._sum[y:y + th, x:x + tw] += tile
        if error_map is not None:
            window = self._max[y:y + th, x:x + tw]
            np.maximum(window, error_map, out=window)
        if score is not None:
            self._scores[k] = score

    def _crop(self, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array[:self.grid.height, :self.grid.width])

    def mean(self) -> np.ndarray:
        """The tiles averaged where they overlap, cropped to the image."""
        count = coverage(self.grid)
        return self._crop(self._sum / (count if self._sum.ndim == 2 else count[..., None]))

    def maximum(self) -> np.ndarray:
        """The error maps' maximum over overlapping tiles, cropped to the image."""
        return self._crop(self._max)

    @property
    def tile_scores(self) -> np.ndarray:
        return self._scores.copy()

    def score(self) -> float:
        """The worst tile's score (NaN until every tile has one)."""
        return float(np.max(self._scores))


def stitch(tiles: np.ndarray, grid: TileGrid, reduce: str = "mean") -> np.ndarray:
    """Tiles (in `grid.positions` order) back into one image: "mean" or "max" where they overlap."""
    if len(tiles) != len(grid):
        raise ValueError(f"{len(tiles)} tiles for a grid of {len(grid)}")
    tiles = np.asarray(tiles, np.float32)
    if reduce == "mean":
        canvas = TileCanvas(grid, None if tiles.ndim == 3 else tiles.shape[3])
        for k, tile in enumerate(tiles):
            canvas.add(k, tile=tile)
        return canvas.mean()
    if reduce == "max":
        if tiles.ndim != 3:
            raise ValueError("max stitching takes single-channel maps (N x th x tw)")
        canvas = TileCanvas(grid)
        for k, tile in enumerate(tiles):
            canvas.add(k, error_map=tile)
        return canvas.maximum()
    raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")


def random_positions(grid: TileGrid, n: int, rng: np.random.Generator) -> np.ndarray:
    """n random top-left corners (y, x) of whole tiles inside the padded image; training crops."""
    ph, pw = grid.padded
    th, tw = grid.tile
    ys = rng.integers(0, ph - th + 1, size=n)
    xs = rng.integers(0, pw - tw + 1, size=n)
    return np.stack([ys, xs], axis=1)
