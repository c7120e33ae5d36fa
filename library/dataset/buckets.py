"""sd-scripts' aspect-ratio buckets: the bucket list and where each image lands, default and bucket_no_upscale modes."""

from __future__ import annotations

import math
from dataclasses import dataclass

from library.errors import OptionError

DEFAULT_MIN_BUCKET_RESO = 256  # sd-scripts' defaults when a config leaves these keys out
DEFAULT_MAX_BUCKET_RESO = 1024
DEFAULT_BUCKET_RESO_STEPS = 64
DEFAULT_RESOLUTION = 1024  # captionkit's default training resolution (sd-scripts takes it from the trainer's flags)
BUCKET_KEYS = ("resolution", "enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps",
               "bucket_no_upscale")


def as_resolution(value) -> tuple[int, int]:
    """sd-scripts' `resolution`: an int (square) or [width, height] -> (width, height).

    Raises:
        OptionError: for anything else, or a size below 1.
    """
    if isinstance(value, bool):
        raise OptionError(f"resolution must be an integer or [width, height], got {value!r}")
    if isinstance(value, str):
        parts = value.replace(",", " ").replace("x", " ").split()
        if len(parts) not in (1, 2) or not all(p.isdigit() for p in parts):
            raise OptionError(f"resolution must be one or two whole numbers, got {value!r}")
        value = int(parts[0]) if len(parts) == 1 else [int(p) for p in parts]
    if isinstance(value, int):
        w = h = value
    elif isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        w, h = value
    else:
        raise OptionError(f"resolution must be an integer or [width, height], got {value!r}")
    if w < 1 or h < 1:
        raise OptionError(f"resolution must be positive, got {value!r}")
    return int(w), int(h)


def make_bucket_resolutions(max_reso: tuple[int, int], min_size: int = DEFAULT_MIN_BUCKET_RESO,
                            max_size: int = DEFAULT_MAX_BUCKET_RESO,
                            divisible: int = DEFAULT_BUCKET_RESO_STEPS) -> list[tuple[int, int]]:
    """The predefined buckets sd-scripts makes for area max_reso[0]*max_reso[1], sorted by (width, height).

    Args:
        max_reso: the training resolution (width, height); its area is every bucket's budget.
        min_size, max_size: smallest and largest bucket side.
        divisible: bucket_reso_steps; every side is a multiple of it.
    """
    max_area = max_reso[0] * max_reso[1]
    resos = {(int(math.sqrt(max_area) // divisible) * divisible,) * 2}
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += divisible
    return sorted(resos)


def adjust_bucket_bounds(min_reso: int, max_reso: int, steps: int) -> tuple[int, int]:
    """Round min_bucket_reso down and max_bucket_reso up to multiples of steps, as sd-scripts does."""
    if min_reso % steps:
        min_reso -= min_reso % steps
    if max_reso % steps:
        max_reso += steps - max_reso % steps
    return min_reso, max_reso


def check_bucket_bounds(resolution: tuple[int, int], min_reso: int, max_reso: int) -> None:
    """Raise OptionError where sd-scripts would stop: min_bucket_reso above or max_bucket_reso below the resolution."""
    if min(resolution) < min_reso:
        raise OptionError(f"min_bucket_reso {min_reso} is larger than the resolution's short side "
                         f"{min(resolution)}; sd-scripts refuses that")
    if max(resolution) > max_reso:
        raise OptionError(f"max_bucket_reso {max_reso} is smaller than the resolution's long side "
                         f"{max(resolution)}; sd-scripts refuses that")


@dataclass(frozen=True)
class BucketSettings:
    """The dataset keys that decide bucketing, with sd-scripts' defaults."""

    resolution: tuple[int, int] = (1024, 1024)
    enable_bucket: bool = True
    min_bucket_reso: int = DEFAULT_MIN_BUCKET_RESO
    max_bucket_reso: int = DEFAULT_MAX_BUCKET_RESO
    bucket_reso_steps: int = DEFAULT_BUCKET_RESO_STEPS
    bucket_no_upscale: bool = False

    def describe(self) -> str:
        w, h = self.resolution
        if not self.enable_bucket:
            return f"resolution {w}x{h}, no bucketing (every image resized and cropped to {w}x{h})"
        if self.bucket_no_upscale:
            return (f"resolution {w}x{h}, bucket_no_upscale, steps {self.bucket_reso_steps} "
                    "(min/max_bucket_reso are ignored in this mode)")
        return (f"resolution {w}x{h}, buckets {self.min_bucket_reso}..{self.max_bucket_reso}, "
                f"steps {self.bucket_reso_steps}")


def default_bucket_bounds(resolution, steps: int = DEFAULT_BUCKET_RESO_STEPS) -> tuple[int, int]:
    """min/max_bucket_reso for a resolution: 256 (or the short side if smaller) .. twice the long side."""
    w, h = as_resolution(resolution)
    low = max(steps, min(256, min(w, h)) // steps * steps)
    high = -(-2 * max(w, h) // steps) * steps
    return low, high


def default_bucket_settings(keys: dict | None = None) -> BucketSettings:
    """BucketSettings from sd-scripts dataset keys (BUCKET_KEYS); the keys left out get captionkit's defaults.

    The defaults are what make_dataset_config.py writes: resolution 1024, bucketing on, buckets from 256 (or the
    short side) to twice the long side, steps 64, upscaling allowed.

    Raises:
        OptionError: a resolution that is not one or two positive whole numbers.
    """
    keys = keys or {}
    resolution = as_resolution(keys.get("resolution", DEFAULT_RESOLUTION))
    steps = keys.get("bucket_reso_steps", DEFAULT_BUCKET_RESO_STEPS)
    low, high = default_bucket_bounds(resolution, steps)
    return BucketSettings(resolution, keys.get("enable_bucket", True), keys.get("min_bucket_reso", low),
                          keys.get("max_bucket_reso", high), steps, keys.get("bucket_no_upscale", False))


@dataclass(frozen=True)
class BucketAssignment:
    """Where one image lands: its bucket, the size it is resized to before the centre crop, the aspect error."""

    image_size: tuple[int, int]
    bucket: tuple[int, int]
    resized: tuple[int, int]
    ar_error: float

    @property
    def upscaled(self) -> bool:
        """True when training enlarges the image (blurry input)."""
        return self.resized[0] > self.image_size[0] or self.resized[1] > self.image_size[1]


class BucketPlanner:
    """sd-scripts' BucketManager.select_bucket for one dataset's settings, without numpy or training code.

    Args:
        settings: the dataset's bucketing keys. Raises OptionError where sd-scripts would refuse them.
    """

    def __init__(self, settings: BucketSettings):
        self.settings = settings
        steps = settings.bucket_reso_steps
        if steps < 1:
            raise OptionError(f"bucket_reso_steps must be at least 1, got {steps}")
        self.no_upscale = settings.enable_bucket and settings.bucket_no_upscale
        self.max_area = settings.resolution[0] * settings.resolution[1]
        self.steps = steps
        self.min_bucket_reso, self.max_bucket_reso = settings.min_bucket_reso, settings.max_bucket_reso
        if not settings.enable_bucket:
            self.predefined = [tuple(settings.resolution)]
        elif self.no_upscale:
            self.predefined = []
        else:
            self.min_bucket_reso, self.max_bucket_reso = adjust_bucket_bounds(
                settings.min_bucket_reso, settings.max_bucket_reso, steps)
            check_bucket_bounds(settings.resolution, self.min_bucket_reso, self.max_bucket_reso)
            self.predefined = make_bucket_resolutions(settings.resolution, self.min_bucket_reso,
                                                      self.max_bucket_reso, steps)
        self._predefined_set = set(self.predefined)
        self._ratios = [w / h for w, h in self.predefined]

    def _round_to_steps(self, x: float) -> int:
        x = int(x + 0.5)
        return x - x % self.steps

    def assign(self, width: int, height: int) -> BucketAssignment:
        """The bucket and resized size sd-scripts gives an image of width x height (its stored size, no EXIF turn)."""
        aspect = width / height
        if not self.no_upscale:
            reso = (width, height)
            if reso not in self._predefined_set:
                errors = [abs(r - aspect) for r in self._ratios]
                reso = self.predefined[errors.index(min(errors))]  # first minimum, like numpy's argmin
            if aspect > reso[0] / reso[1]:
                scale = reso[1] / height
            else:
                scale = reso[0] / width
            resized = (int(width * scale + 0.5), int(height * scale + 0.5))
        else:
            if width * height > self.max_area:
                rw = math.sqrt(self.max_area * aspect)
                rh = self.max_area / rw
                bw = self._round_to_steps(rw)
                bh_in_w = self._round_to_steps(bw / aspect)
                ar_w = bw / bh_in_w if bh_in_w else math.inf
                bh = self._round_to_steps(rh)
                bw_in_h = self._round_to_steps(bh * aspect)
                ar_h = bw_in_h / bh if bh else math.inf
                if abs(ar_w - aspect) < abs(ar_h - aspect):
                    resized = (bw, int(bw / aspect + 0.5))
                else:
                    resized = (int(bh * aspect + 0.5), bh)
            else:
                resized = (width, height)
            reso = (resized[0] - resized[0] % self.steps, resized[1] - resized[1] % self.steps)
        ar_error = (reso[0] / reso[1]) - aspect if reso[1] else math.inf
        return BucketAssignment((width, height), reso, resized, ar_error)
