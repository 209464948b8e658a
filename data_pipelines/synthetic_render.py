"""Procedural rendering of little pedestrians for the embedded synthetic ReID dataset.

An *identity* is a fixed appearance: top / bottom / accent colours from a small palette,
what the accent colour is used for (backpack, shoulder bag, hat, stripes, chest logo,
sleeves, open jacket), sleeve length, trousers / shorts / skirt, hair, skin, shoes and
body proportions. Identities are made in *sibling groups* that share one colour
multiset but arrange it differently (red top / blue trousers / green backpack vs blue
top / red trousers / green cap, ...), so a colour histogram cannot tell siblings apart
while the spatial layout can.

A *camera* fixes a background panorama, a colour cast, illumination, gamma, blur,
resolution loss, noise, JPEG quality and how large people appear in its boxes.

`render_image` draws one bounding-box crop: a window of the camera's panorama,
background clutter (objects, other pedestrians), the person in a random viewpoint
(front / back / left / right: a backpack shows fully only from behind, a logo only from
the front) and walking phase with box misalignment, an optional occluder in front, then
the camera's degradations. Everything is drawn with PIL.ImageDraw on a 2x supersampled
canvas and finished with vectorised numpy; a few milliseconds per image.

All randomness comes from the `numpy.random.Generator` passed in, so a crop is a pure
function of its generator's seed, the identity, the camera and the difficulty knobs.
"""

import dataclasses
import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fsaf_jax.core import errors

# Clothing palette (name, RGB). Small on purpose: many identities share each colour.
PALETTE = (
  ("black", (30, 30, 34)),
  ("white", (226, 226, 220)),
  ("red", (192, 36, 42)),
  ("blue", (38, 72, 178)),
  ("yellow", (228, 196, 46)),
  ("green", (40, 142, 72)),
  ("grey", (130, 130, 134)),
  ("pink", (232, 140, 182)),
  ("brown", (122, 76, 40)),
  ("orange", (236, 126, 36)),
  ("purple", (116, 56, 152)),
  ("light_blue", (132, 182, 228)),
)
SKIN_TONES = ((236, 196, 164), (206, 156, 116), (150, 102, 70), (98, 66, 46))
HAIR_COLOURS = ((24, 20, 18), (80, 52, 30), (190, 150, 90), (150, 150, 150))
SHOE_COLOURS = ((26, 26, 28), (220, 220, 216), (90, 60, 36), (110, 110, 116))

ACCENT_USES = ("backpack", "shoulder_bag", "hat", "stripes", "logo", "sleeves", "jacket")
VIEWS = ("front", "back", "left", "right")

# Canvas supersampling factor (drawn at 2x, then filtered down).
SUPERSAMPLE = 2
# Index offsets of the R, G, B rows of a flattened [3, 256] lookup table.
_CHANNEL_OFFSETS = np.array([0, 256, 512], np.int16)


@dataclasses.dataclass(frozen=True)
class Difficulty:
  """Knobs of how hard the dataset is; the defaults are the embedded dataset's.

  Measured on the default dataset (seed 0, 100 train / 100 test ids): the colour-histogram
  baseline scores mAP 0.19; a small 4-stage CNN (16-128 channels, ~0.3M parameters,
  64x32 input, CE + triplet, Adam 1e-3 without decay, P16 x K4) reaches mAP ~0.72
  (Rank-1 ~0.84) after 400-500 steps. With clutter 3, occlusion 0.2, colour cast 0.12
  and 10 colours it was ~0.70 after 500 steps.

  Attributes:
    palette_size: clothing colours used (first n of `PALETTE`, 3..12). Fewer colours
      mean more identities per colour.
    group_size: identities per sibling group sharing one colour multiset (1 = none).
    colour_cast: std of the per-camera log-gain of each RGB channel.
    illumination: per-camera brightness drawn from [1 - x, 1 + x / 2].
    image_jitter: std of per-image log-gain / log-brightness around the camera's.
    blur: maximum per-camera Gaussian blur radius, in output pixels.
    resolution_loss: per-camera down-then-up sampling factor drawn from [1, 1 + x].
    noise: maximum per-camera pixel-noise std (0..255 scale).
    clutter: maximum number of background objects / pedestrians per crop.
    occlusion_prob: probability of an occluder (object, pole, other person) in front.
    pose_jitter: scales box misalignment (shift, scale) and walking-stride amplitude.
    side_view_prob: probability of a left or right side view (rest: front / back).
  """

  palette_size: int = 12
  group_size: int = 3
  colour_cast: float = 0.1
  illumination: float = 0.3
  image_jitter: float = 0.04
  blur: float = 0.8
  resolution_loss: float = 0.8
  noise: float = 5.0
  clutter: int = 2
  occlusion_prob: float = 0.15
  pose_jitter: float = 1.0
  side_view_prob: float = 0.3

  def validate(self) -> None:
    """Raises ValueError naming the first knob outside its range."""
    checks = (
      ("palette_size", 3 <= self.palette_size <= len(PALETTE), f"3..{len(PALETTE)}"),
      ("group_size", 1 <= self.group_size <= 6, "1..6"),
      ("colour_cast", 0.0 <= self.colour_cast <= 1.0, "[0, 1]"),
      ("illumination", 0.0 <= self.illumination < 1.0, "[0, 1)"),
      ("image_jitter", 0.0 <= self.image_jitter <= 0.5, "[0, 0.5]"),
      ("blur", 0.0 <= self.blur <= 5.0, "[0, 5]"),
      ("resolution_loss", 0.0 <= self.resolution_loss <= 4.0, "[0, 4]"),
      ("noise", 0.0 <= self.noise <= 50.0, "[0, 50]"),
      ("clutter", 0 <= self.clutter <= 10, "0..10"),
      ("occlusion_prob", 0.0 <= self.occlusion_prob <= 1.0, "[0, 1]"),
      ("pose_jitter", 0.0 <= self.pose_jitter <= 3.0, "[0, 3]"),
      ("side_view_prob", 0.0 <= self.side_view_prob <= 1.0, "[0, 1]"),
    )
    for name, ok, allowed in checks:
      if not ok:
        raise errors.UserError(
          f"Difficulty.{name}={getattr(self, name)!r} is outside its range {allowed}."
        )


RGB = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class Identity:
  """Appearance of one person (fixed across all of their images).

  Colours are RGB tuples; `top`, `bottom`, `accent` also keep their palette indices
  (`*_index`) so tests and statistics can reason about them.
  """

  top_index: int
  bottom_index: int
  accent_index: int
  top: RGB
  bottom: RGB
  accent: RGB
  accent_use: str  # one of ACCENT_USES
  sleeves: str  # 'long' | 'short'
  bottom_style: str  # 'trousers' | 'shorts' | 'skirt'
  hair_style: str  # 'short' | 'long'
  hair: RGB
  skin: RGB
  shoes: RGB
  height: float  # person height as a fraction of a well-fitted box
  build: float  # body-width multiplier
  leg_ratio: float  # hip height / person height
  group: int  # sibling group (identities of a group share `colour_multiset()`)

  def colour_multiset(self) -> tuple[RGB, ...]:
    """Sorted colours of all coloured parts (garments, accent, hair, skin, shoes)."""
    return tuple(sorted((self.top, self.bottom, self.accent, self.hair, self.skin, self.shoes)))

  def arrangement(self) -> tuple:
    """Where each colour goes: differs between siblings that share a colour multiset."""
    return (self.top_index, self.bottom_index, self.accent_index, self.accent_use)


def _jitter_colour(rng: np.random.Generator, rgb: RGB, amount: float) -> RGB:
  c = np.asarray(rgb, np.float64) + rng.normal(0.0, amount, 3)
  return tuple(int(v) for v in np.clip(np.round(c), 0, 255))


def _body_attributes(rng: np.random.Generator) -> dict:
  bottom_style = str(rng.choice(("trousers", "trousers", "shorts", "skirt")))
  return dict(
    sleeves=str(rng.choice(("long", "short"))),
    bottom_style=bottom_style,
    hair_style=str(rng.choice(("short", "long"))),
    height=float(rng.uniform(0.88, 1.0)),
    build=float(rng.uniform(0.85, 1.15)),
    leg_ratio=float(rng.uniform(0.46, 0.53)),
  )


def make_identities(
  rng: np.random.Generator, num: int, difficulty: Difficulty, first_group: int = 0
) -> list[Identity]:
  """Draws `num` identities in sibling groups of `difficulty.group_size`.

  A group draws three distinct palette colours {a, b, x} (with a small shared shade
  jitter) plus hair, skin and shoe colours; each member assigns {a, b, x} to
  (top, bottom, accent) by a different permutation and uses the accent differently, so
  the members share `colour_multiset()` but not `arrangement()`.

  Args:
    rng: generator all draws come from.
    num: number of identities.
    difficulty: palette size and group size are used.
    first_group: group number of the first group (keeps group ids unique across calls).

  Returns:
    `num` identities; every group of `group_size` consecutive ones are siblings (the
    last group may be smaller).
  """
  out = []
  group = first_group
  perms = ((0, 1, 2), (1, 0, 2), (2, 1, 0), (0, 2, 1), (1, 2, 0), (2, 0, 1))
  while len(out) < num:
    size = min(difficulty.group_size, num - len(out))
    idx = rng.choice(difficulty.palette_size, 3, replace=False)
    rgbs = [_jitter_colour(rng, PALETTE[i][1], 6.0) for i in idx]
    hair = _jitter_colour(rng, HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))], 4.0)
    skin = _jitter_colour(rng, SKIN_TONES[rng.integers(len(SKIN_TONES))], 4.0)
    shoes = _jitter_colour(rng, SHOE_COLOURS[rng.integers(len(SHOE_COLOURS))], 4.0)
    perm_order = rng.permutation(len(perms))
    use_order = rng.permutation(len(ACCENT_USES))
    for m in range(size):
      p = perms[perm_order[m % len(perms)]]
      use = ACCENT_USES[use_order[m % len(ACCENT_USES)]]
      attrs = _body_attributes(rng)
      if use == "sleeves":
        attrs["sleeves"] = "long"
      out.append(
        Identity(
          top_index=int(idx[p[0]]),
          bottom_index=int(idx[p[1]]),
          accent_index=int(idx[p[2]]),
          top=rgbs[p[0]],
          bottom=rgbs[p[1]],
          accent=rgbs[p[2]],
          accent_use=use,
          hair=hair,
          skin=skin,
          shoes=shoes,
          group=group,
          **attrs,
        )
      )
    group += 1
  return out


def random_identity(rng: np.random.Generator, difficulty: Difficulty) -> Identity:
  """One unrelated identity (distractors, passers-by in the background)."""
  return make_identities(rng, 1, difficulty, first_group=-1)[0]


@dataclasses.dataclass(frozen=True, eq=False)
class Camera:
  """Fixed look of one camera. `panorama`: RGB image, canvas height x 4 canvas widths."""

  gain: tuple[float, float, float]
  brightness: float
  contrast: float
  gamma: float
  blur: float
  resolution_loss: float
  noise: float
  jpeg_quality: int
  person_scale: float
  floor_y: float  # horizon height as a fraction of the box
  panorama: Image.Image


def _muted(rng: np.random.Generator, lo: int = 60, hi: int = 200, sat: float = 0.25) -> RGB:
  grey = rng.uniform(lo, hi)
  c = grey * (1.0 + rng.uniform(-sat, sat, 3))
  return tuple(int(v) for v in np.clip(c, 0, 255))


def _make_panorama(rng: np.random.Generator, h: int, w: int, floor_y: float) -> Image.Image:
  """A street scene strip: wall / buildings, windows, poles, trees, paved floor."""
  img = Image.new("RGB", (w, h), _muted(rng))
  d = ImageDraw.Draw(img)
  horizon = int(floor_y * h)
  # Buildings / walls above the horizon.
  x = -int(rng.integers(0, w // 8))
  while x < w:
    bw = int(rng.integers(w // 12, w // 4))
    top = int(rng.uniform(-0.1, 0.45) * h)
    d.rectangle((x, top, x + bw, horizon), fill=_muted(rng, 50, 210, 0.3))
    if rng.random() < 0.7:  # windows
      win = _muted(rng, 20, 120, 0.2)
      ww, wh = int(rng.integers(6, 14)), int(rng.integers(8, 18))
      for wy in range(top + 6, horizon - wh, wh + int(rng.integers(6, 14))):
        for wx in range(x + 4, x + bw - ww, ww + int(rng.integers(5, 12))):
          d.rectangle((wx, wy, wx + ww, wy + wh), fill=win)
    x += bw
  # Floor with paving lines.
  floor = _muted(rng, 70, 170, 0.15)
  d.rectangle((0, horizon, w, h), fill=floor)
  line = tuple(max(0, c - 25) for c in floor)
  for i in range(1, 6):
    y = horizon + int((h - horizon) * (i / 6) ** 1.5)
    d.line((0, y, w, y), fill=line, width=2)
  # Poles and trees.
  for _ in range(int(rng.integers(2, 6))):
    px = int(rng.integers(0, w))
    if rng.random() < 0.5:
      pw = int(rng.integers(3, 8))
      d.rectangle(
        (px, int(rng.uniform(0, 0.3) * h), px + pw, horizon + 6), fill=_muted(rng, 30, 120)
      )
    else:
      tw = int(rng.integers(4, 8))
      d.rectangle((px, int(0.25 * h), px + tw, horizon + 4), fill=(80, 58, 38))
      r = int(rng.integers(18, 36))
      leaf = _jitter_colour(rng, (60, 110, 55), 15.0)
      d.ellipse((px - r, int(0.2 * h) - r, px + tw + r, int(0.2 * h) + r), fill=leaf)
  return img


def make_cameras(
  rng: np.random.Generator, num: int, difficulty: Difficulty, size: tuple[int, int]
) -> list[Camera]:
  """Draws `num` camera looks for output crops of `size` = (H, W)."""
  h, w = size[0] * SUPERSAMPLE, size[1] * SUPERSAMPLE
  cams = []
  for _ in range(num):
    log_gain = rng.normal(0.0, difficulty.colour_cast, 3)
    gain = np.exp(log_gain - log_gain.mean())
    floor_y = float(rng.uniform(0.45, 0.7))
    cams.append(
      Camera(
        gain=tuple(float(g) for g in gain),
        brightness=float(
          rng.uniform(1.0 - difficulty.illumination, 1.0 + difficulty.illumination / 2)
        ),
        contrast=float(rng.uniform(0.8, 1.1)),
        gamma=float(rng.uniform(0.85, 1.2)),
        blur=float(rng.uniform(0.0, difficulty.blur)),
        resolution_loss=float(rng.uniform(1.0, 1.0 + difficulty.resolution_loss)),
        noise=float(rng.uniform(min(1.0, difficulty.noise), difficulty.noise)),
        jpeg_quality=int(rng.integers(75, 96)),
        person_scale=float(rng.uniform(0.8, 0.95)),
        floor_y=floor_y,
        panorama=_make_panorama(rng, h, 4 * w, floor_y),
      )
    )
  return cams


# ------------------------------------------------------------------------- drawing ---


def _shade(rgb: RGB, f: float) -> RGB:
  return tuple(int(min(255, max(0, c * f))) for c in rgb)


def _limb(d: ImageDraw.ImageDraw, p0, p1, w0: float, w1: float, fill: RGB) -> None:
  """A tapered limb (quad) from p0 to p1 with widths w0, w1, rounded at p1."""
  (x0, y0), (x1, y1) = p0, p1
  n = math.hypot(x1 - x0, y1 - y0) or 1.0
  nx, ny = -(y1 - y0) / n, (x1 - x0) / n
  d.polygon(
    [
      (x0 + nx * w0 / 2, y0 + ny * w0 / 2),
      (x1 + nx * w1 / 2, y1 + ny * w1 / 2),
      (x1 - nx * w1 / 2, y1 - ny * w1 / 2),
      (x0 - nx * w0 / 2, y0 - ny * w0 / 2),
    ],
    fill=fill,
  )
  r = w1 / 2
  d.ellipse((x1 - r, y1 - r, x1 + r, y1 + r), fill=fill)


def _point(p0, p1, t: float):
  return (p0[0] + (p1[0] - p0[0]) * t, p0[1] + (p1[1] - p0[1]) * t)


@dataclasses.dataclass(frozen=True)
class _Pose:
  cx: float  # body centre x (canvas px)
  top: float  # top of the head (canvas px)
  h: float  # person height (canvas px)
  view: str  # one of VIEWS
  phase: float  # walking phase (radians)
  stride: float  # leg swing amplitude (radians)


def draw_person(d: ImageDraw.ImageDraw, ident: Identity, pose: _Pose) -> None:
  """Draws `ident` in `pose` onto `d` (painter's order depends on the view)."""
  h, cx, y0, view = pose.h, pose.cx, pose.top, pose.view
  side = view in ("left", "right")
  facing = 1.0 if view == "right" else -1.0  # side views: +1 faces image-right
  b = ident.build
  y_sh = y0 + 0.15 * h  # shoulders
  y_hip = y0 + (1.0 - ident.leg_ratio) * h
  hw_sh = (0.085 if side else 0.13) * h * b
  hw_wa = (0.075 if side else 0.105) * h * b
  shoe_h = 0.035 * h
  leg_len = y0 + h - shoe_h - y_hip
  swing = pose.stride * math.sin(pose.phase)

  def torso_x(y: float) -> tuple[float, float]:
    t = (y - y_sh) / max(1.0, y_hip - y_sh)
    hw = hw_sh + (hw_wa - hw_sh) * t
    return cx - hw, cx + hw

  def draw_leg(hip_x: float, angle: float, dim: float) -> None:
    hip = (hip_x, y_hip)
    ankle = (hip_x + leg_len * math.sin(angle), y_hip + leg_len * math.cos(angle))
    w_hip, w_ank = 0.085 * h * b, 0.05 * h
    skin, bottom = _shade(ident.skin, dim), _shade(ident.bottom, dim)
    if ident.bottom_style == "trousers":
      _limb(d, hip, ankle, w_hip, w_ank, bottom)
    else:
      _limb(d, hip, ankle, w_hip * 0.8, w_ank, skin)
      if ident.bottom_style == "shorts":
        _limb(d, hip, _point(hip, ankle, 0.42), w_hip, w_hip * 0.95, bottom)
    shoe_w = (0.09 if side else 0.065) * h
    sx = ankle[0] + (0.025 * h * facing if side else 0.0)
    d.ellipse(
      (sx - shoe_w / 2, ankle[1] - shoe_h * 0.3, sx + shoe_w / 2, ankle[1] + shoe_h),
      fill=_shade(ident.shoes, dim),
    )

  def draw_arm(shoulder_x: float, angle: float, dim: float) -> None:
    sh = (shoulder_x, y_sh + 0.02 * h)
    arm_len = 0.35 * h
    wrist = (sh[0] + arm_len * math.sin(angle), sh[1] + arm_len * math.cos(angle))
    sleeve = ident.accent if ident.accent_use == "sleeves" else ident.top
    w = 0.055 * h * b
    _limb(d, sh, wrist, w, w * 0.8, _shade(ident.skin, dim))
    if ident.sleeves == "long":
      _limb(d, sh, _point(sh, wrist, 0.92), w, w * 0.85, _shade(sleeve, dim))
    else:
      _limb(d, sh, _point(sh, wrist, 0.38), w * 1.1, w, _shade(sleeve, dim))

  def draw_torso() -> None:
    d.polygon(
      [
        (cx - hw_sh, y_sh),
        (cx + hw_sh, y_sh),
        (cx + hw_wa, y_hip + 0.02 * h),
        (cx - hw_wa, y_hip + 0.02 * h),
      ],
      fill=ident.top,
    )
    d.ellipse((cx - hw_sh, y_sh - 0.02 * h, cx + hw_sh, y_sh + 0.05 * h), fill=ident.top)
    if ident.accent_use == "stripes":
      period = 0.065 * h
      y = y_sh + 0.03 * h
      while y + period / 2 < y_hip:
        y1 = y + period / 2
        (a0, b0), (a1, b1) = torso_x(y), torso_x(y1)
        d.polygon([(a0, y), (b0, y), (b1, y1), (a1, y1)], fill=ident.accent)
        y += period
    if view == "front" and ident.accent_use == "logo":
      lw = 0.065 * h * b
      d.rectangle((cx - lw, y_sh + 0.06 * h, cx + lw, y_sh + 0.17 * h), fill=ident.accent)
    if view == "front" and ident.accent_use == "jacket":
      jw = 0.045 * h * b
      d.polygon(
        [
          (cx - jw, y_sh - 0.01 * h),
          (cx + jw, y_sh - 0.01 * h),
          (cx + jw * 0.8, y_hip),
          (cx - jw * 0.8, y_hip),
        ],
        fill=ident.accent,
      )
    if side and ident.accent_use == "jacket":  # open jacket seen from the side: front edge
      x_front = cx + facing * hw_sh * 0.55
      d.polygon(
        [
          (x_front, y_sh),
          (cx + facing * hw_sh, y_sh),
          (cx + facing * hw_wa, y_hip),
          (x_front, y_hip),
        ],
        fill=ident.accent,
      )

  def draw_pelvis() -> None:
    top = y_hip - 0.03 * h
    if ident.bottom_style == "skirt":
      bot = y_hip + 0.42 * leg_len
      flare = 1.35 if not side else 1.2
      d.polygon(
        [
          (cx - hw_wa, top),
          (cx + hw_wa, top),
          (cx + hw_wa * flare, bot),
          (cx - hw_wa * flare, bot),
        ],
        fill=ident.bottom,
      )
    else:
      d.rectangle((cx - hw_wa, top, cx + hw_wa, y_hip + 0.07 * h), fill=ident.bottom)

  def draw_backpack() -> None:
    col = ident.accent
    if view == "back":
      bw = 0.1 * h * b
      d.rounded_rectangle(
        (cx - bw, y_sh + 0.03 * h, cx + bw, y_sh + 0.28 * h), radius=0.03 * h, fill=col
      )
    elif view == "front":
      for s in (-1.0, 1.0):
        x_top = cx + s * hw_sh * 0.62
        d.line(
          (x_top, y_sh, x_top - s * 0.01 * h, y_sh + 0.2 * h),
          fill=col,
          width=max(2, int(0.025 * h)),
        )
    else:
      x_in = cx - facing * hw_sh * 0.9  # protrudes behind the back
      x_out = x_in - facing * 0.09 * h
      d.rounded_rectangle(
        (min(x_in, x_out), y_sh + 0.02 * h, max(x_in, x_out), y_sh + 0.27 * h),
        radius=0.025 * h,
        fill=col,
      )

  def draw_bag() -> None:
    col = ident.accent
    if side:
      bx = cx - 0.02 * h * facing
      strap_from = (cx + facing * hw_sh * 0.3, y_sh)
    else:
      s = -1.0 if view == "front" else 1.0  # bag hangs on the person's left side
      bx = cx + s * (hw_wa + 0.03 * h)
      strap_from = (cx - s * hw_sh * 0.7, y_sh)
    by = y_hip - 0.02 * h
    d.line((*strap_from, bx, by), fill=_shade(col, 0.8), width=max(2, int(0.02 * h)))
    bw, bh = 0.055 * h, 0.065 * h
    d.rounded_rectangle((bx - bw, by - bh, bx + bw, by + bh), radius=0.015 * h, fill=col)

  def draw_head() -> None:
    ry, rx = 0.065 * h, (0.05 if side else 0.047) * h
    hy = y0 + ry
    hx = cx + (0.01 * h * facing if side else 0.0)
    d.rectangle((cx - 0.02 * h, hy, cx + 0.02 * h, y_sh + 0.01 * h), fill=ident.skin)  # neck
    d.ellipse((hx - rx, hy - ry, hx + rx, hy + ry), fill=ident.hair)
    if view == "front":
      d.ellipse((hx - rx * 0.85, hy - ry * 0.55, hx + rx * 0.85, hy + ry), fill=ident.skin)
    elif side:
      fx = hx + facing * rx * 0.35
      d.ellipse((fx - rx * 0.7, hy - ry * 0.5, fx + rx * 0.7, hy + ry), fill=ident.skin)
    if ident.accent_use == "hat":
      d.chord(
        (hx - rx * 1.1, hy - ry * 1.15, hx + rx * 1.1, hy + ry * 0.6), 180, 360, fill=ident.accent
      )
      if view == "front":
        d.ellipse(
          (hx - rx * 1.1, hy - ry * 0.45, hx + rx * 1.1, hy - ry * 0.05),
          fill=_shade(ident.accent, 0.8),
        )
      elif side:
        x1 = hx + facing * rx * 1.7
        d.rectangle(
          (min(hx, x1), hy - ry * 0.35, max(hx, x1), hy - ry * 0.1), fill=_shade(ident.accent, 0.8)
        )

  def draw_long_hair_back() -> None:
    if ident.hair_style != "long":
      return
    hy = y0 + 0.065 * h
    if view == "back":
      d.rectangle((cx - 0.045 * h, hy, cx + 0.045 * h, y_sh + 0.1 * h), fill=ident.hair)
    elif view == "front":
      d.rectangle((cx - 0.055 * h, hy, cx + 0.055 * h, y_sh + 0.05 * h), fill=ident.hair)
    else:
      xb = cx - facing * 0.045 * h
      d.rectangle((min(cx, xb), hy, max(cx, xb), y_sh + 0.08 * h), fill=ident.hair)

  hip_dx = 0.045 * h * b
  if side:
    # Far arm and leg first (slightly darker), then the body, then the near limbs.
    draw_arm(cx - facing * 0.01 * h, -facing * swing * 0.8, 0.75)
    draw_leg(cx, -facing * swing, 0.8)
    draw_leg(cx, facing * swing, 1.0)
    draw_pelvis()
    if ident.hair_style == "long":
      draw_long_hair_back()
    draw_torso()
    if ident.accent_use == "backpack":
      draw_backpack()
    draw_arm(cx + facing * 0.01 * h, facing * swing * 0.8, 1.0)
    if ident.accent_use == "shoulder_bag":
      draw_bag()
    draw_head()
    return
  small = 0.25 * swing
  draw_leg(cx - hip_dx, -0.03 + small, 1.0)
  draw_leg(cx + hip_dx, 0.03 - small, 1.0)
  draw_pelvis()
  if view == "front":
    draw_long_hair_back()
  arm_x = hw_sh * 0.92
  draw_arm(cx - arm_x, 0.1 + small, 0.95)
  draw_arm(cx + arm_x, -0.1 - small, 0.95)
  draw_torso()
  if view == "back":
    draw_head()
    draw_long_hair_back()
  if ident.accent_use == "backpack":
    draw_backpack()
  if ident.accent_use == "shoulder_bag":
    draw_bag()
  if view == "front":
    draw_head()
  elif ident.accent_use == "hat":  # cap over long hair seen from behind
    draw_head()


def _random_pose(
  rng: np.random.Generator,
  canvas: tuple[int, int],
  ident: Identity,
  camera: Camera,
  difficulty: Difficulty,
) -> _Pose:
  ch, cw = canvas
  j = difficulty.pose_jitter
  h = ch * ident.height * camera.person_scale * math.exp(rng.normal(0.0, 0.04 * j))
  h = min(h, 0.98 * ch)
  top = (ch - h) * float(np.clip(rng.normal(0.5, 0.15 * j), 0.0, 1.0))
  cx = cw / 2 + rng.normal(0.0, 0.05 * j) * cw
  if rng.random() < difficulty.side_view_prob:
    view = "left" if rng.random() < 0.5 else "right"
    stride = 0.32
  else:
    view = "front" if rng.random() < 0.5 else "back"
    stride = 0.25
  return _Pose(
    cx=cx,
    top=top,
    h=h,
    view=view,
    phase=float(rng.uniform(0, 2 * math.pi)),
    stride=stride * min(j, 1.5),
  )


def _draw_clutter(
  d: ImageDraw.ImageDraw,
  rng: np.random.Generator,
  canvas: tuple[int, int],
  camera: Camera,
  difficulty: Difficulty,
) -> None:
  """Background objects and far-away pedestrians (behind the person)."""
  ch, cw = canvas
  horizon = camera.floor_y * ch
  for _ in range(int(rng.integers(0, difficulty.clutter + 1))):
    kind = rng.random()
    if kind < 0.45:  # a passer-by further away
      ident = random_identity(rng, difficulty)
      h = ch * rng.uniform(0.45, 0.75)
      top = horizon - 0.85 * h + rng.normal(0, 0.03 * ch)
      pose = _Pose(
        cx=float(rng.uniform(-0.1, 1.1) * cw),
        top=top,
        h=h,
        view=str(rng.choice(VIEWS)),
        phase=float(rng.uniform(0, 2 * math.pi)),
        stride=0.3,
      )
      draw_person(d, ident, pose)
    elif kind < 0.8:  # a box / sign / bin
      w, hh = rng.uniform(0.15, 0.5) * cw, rng.uniform(0.08, 0.3) * ch
      x = rng.uniform(-0.2, 1.0) * cw
      y1 = horizon + rng.uniform(0.0, 0.25) * ch
      col = (
        PALETTE[int(rng.integers(difficulty.palette_size))][1]
        if rng.random() < 0.5
        else _muted(rng)
      )
      d.rectangle((x, y1 - hh, x + w, y1), fill=_jitter_colour(rng, col, 10.0))
    else:  # a pole
      pw = rng.uniform(0.04, 0.08) * cw
      x = rng.uniform(0.0, 1.0) * cw
      d.rectangle((x, 0, x + pw, horizon + 0.05 * ch), fill=_muted(rng, 40, 160))


def _draw_occluder(
  d: ImageDraw.ImageDraw,
  rng: np.random.Generator,
  canvas: tuple[int, int],
  pose: _Pose,
  difficulty: Difficulty,
) -> None:
  """Something in front of the person: a low object, a pole or another pedestrian."""
  ch, cw = canvas
  kind = rng.random()
  if kind < 0.4:  # low object (bench, car bonnet, bike) over the legs
    top = ch - rng.uniform(0.15, 0.35) * pose.h
    col = (
      PALETTE[int(rng.integers(difficulty.palette_size))][1] if rng.random() < 0.5 else _muted(rng)
    )
    x0 = rng.uniform(-0.3, 0.3) * cw
    d.rectangle((x0, top, x0 + rng.uniform(0.7, 1.3) * cw, ch), fill=_jitter_colour(rng, col, 10.0))
  elif kind < 0.6:  # pole
    pw = rng.uniform(0.08, 0.15) * cw
    x = pose.cx + rng.uniform(-0.3, 0.3) * cw
    d.rectangle((x - pw / 2, 0, x + pw / 2, ch), fill=_muted(rng, 40, 160))
  else:  # another pedestrian, closer to the camera, at the left or right edge
    ident = random_identity(rng, difficulty)
    s = -1.0 if rng.random() < 0.5 else 1.0
    h = pose.h * rng.uniform(1.0, 1.2)
    occ = _Pose(
      cx=cw / 2 + s * rng.uniform(0.45, 0.62) * cw,
      top=pose.top + rng.normal(0, 0.04 * ch),
      h=h,
      view=str(rng.choice(VIEWS)),
      phase=float(rng.uniform(0, 2 * math.pi)),
      stride=0.3,
    )
    draw_person(d, ident, occ)


def _apply_camera(
  img: Image.Image,
  rng: np.random.Generator,
  camera: Camera,
  difficulty: Difficulty,
  size: tuple[int, int],
) -> np.ndarray:
  """Supersampled canvas -> degraded uint8 [H, W, 3] crop as this camera sees it."""
  h, w = size
  res = camera.resolution_loss * math.exp(rng.normal(0.0, 0.1))
  if res > 1.05:
    small = (max(8, round(w / res)), max(16, round(h / res)))
    img = img.resize(small, Image.Resampling.BILINEAR).resize((w, h), Image.Resampling.BILINEAR)
  else:
    img = img.resize((w, h), Image.Resampling.BILINEAR)
  blur = camera.blur * math.exp(rng.normal(0.0, 0.2))
  if blur > 0.15:
    img = img.filter(ImageFilter.GaussianBlur(blur))
  # Gamma, colour cast and brightness as one per-channel lookup table [3, 256].
  gain = np.asarray(camera.gain) * np.exp(rng.normal(0.0, difficulty.image_jitter, 3))
  gain *= camera.brightness * math.exp(rng.normal(0.0, 2 * difficulty.image_jitter))
  lut = (np.linspace(0.0, 1.0, 256) ** camera.gamma)[None, :] * (255.0 * gain)[:, None]
  x = np.take(lut.astype(np.float32).reshape(-1), np.asarray(img) + _CHANNEL_OFFSETS)
  mean = x.reshape(-1, 3).mean(axis=0)
  x = (x - mean) * np.float32(camera.contrast) + mean
  # Soft illumination gradient across the box (light from one side), then sensor noise.
  ramp = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :, None]
  x *= 1.0 + np.float32(rng.normal(0.0, 0.08)) * ramp
  x += np.float32(camera.noise) * rng.standard_normal(x.shape, dtype=np.float32)
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _background(rng: np.random.Generator, camera: Camera, canvas: tuple[int, int]) -> Image.Image:
  ch, cw = canvas
  x0 = int(rng.integers(0, camera.panorama.width - cw + 1))
  crop = camera.panorama.crop((x0, 0, x0 + cw, ch))
  if rng.random() < 0.5:
    crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  return crop


def render_image(
  rng: np.random.Generator,
  ident: Identity | None,
  camera: Camera,
  difficulty: Difficulty,
  size: tuple[int, int] = (128, 64),
  kind: str = "person",
) -> np.ndarray:
  """Renders one bounding-box crop.

  Args:
    rng: the crop's own generator (the crop is a pure function of its state).
    ident: the person; ignored for `kind='junk'`.
    camera: the camera that sees it.
    difficulty: knobs.
    size: output (H, W).
    kind: 'person' (a well-detected box), 'distractor' (a poorly aligned box around
      `ident`: shifted, mis-scaled), or 'junk' (background or a fragment of a body).

  Returns:
    uint8 [H, W, 3] RGB.
  """
  canvas = (size[0] * SUPERSAMPLE, size[1] * SUPERSAMPLE)
  img = _background(rng, camera, canvas)
  d = ImageDraw.Draw(img)
  _draw_clutter(d, rng, canvas, camera, difficulty)
  if kind == "person":
    pose = _random_pose(rng, canvas, ident, camera, difficulty)
    draw_person(d, ident, pose)
    if rng.random() < difficulty.occlusion_prob:
      _draw_occluder(d, rng, canvas, pose, difficulty)
  elif kind == "distractor":
    pose = _random_pose(rng, canvas, ident, camera, difficulty)
    shift = rng.uniform(0.2, 0.4) * canvas[1] * (1 if rng.random() < 0.5 else -1)
    pose = dataclasses.replace(pose, cx=pose.cx + shift, h=pose.h * rng.uniform(0.7, 1.3))
    draw_person(d, ident, pose)
  elif kind == "junk":
    if rng.random() < 0.6:  # a body fragment far too close to the camera
      frag = random_identity(rng, difficulty)
      h = canvas[0] * rng.uniform(1.8, 3.0)
      pose = _Pose(
        cx=canvas[1] * rng.uniform(0.0, 1.0),
        top=-h * rng.uniform(0.2, 0.6),
        h=h,
        view=str(rng.choice(VIEWS)),
        phase=float(rng.uniform(0, 2 * math.pi)),
        stride=0.3,
      )
      draw_person(d, frag, pose)
  else:
    raise ValueError(f"render_image: kind={kind!r}; expected 'person', 'distractor' or 'junk'.")
  return _apply_camera(img, rng, camera, difficulty, size)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
  """uint8 [H, W, 3] -> JPEG bytes (baseline, 4:2:0, deterministic)."""
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()
