"""The embedded `synthetic` data source: procedurally drawn, face-like images.

A stand-in for CelebA that needs no network: every image is a deterministic function of
(seed, index), drawn with PIL at 2x and downsampled with an anti-aliased filter. Faces vary in
shape, skin tone, hair (colour, length, fringe), eyes (colour, spacing), brows, nose, mouth
(width, smile), background and a small pose jitter (rotation, shift, scale), so a GAN has a real
distribution to learn. The report names it as synthetic wherever its numbers appear.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

SKIN_TONES = [(255, 224, 196), (241, 194, 160), (224, 172, 130), (198, 134, 92), (141, 85, 54), (94, 60, 40)]
HAIR_COLOURS = [(20, 16, 14), (60, 40, 25), (110, 75, 40), (200, 160, 90), (150, 60, 30), (170, 170, 170)]
IRIS_COLOURS = [(60, 40, 20), (40, 90, 140), (60, 110, 60), (90, 90, 90)]


def _jitter(rng: np.random.Generator, colour, amount: int = 18):
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def render_face(seed: int, index: int, size: int = 128) -> np.ndarray:
    """Draw face `index` of the set `seed` as a uint8 (size, size, 3) RGB array."""
    rng = np.random.default_rng([seed, index])
    s = 2 * size  # draw at 2x, then downsample: anti-aliased edges
    bg_top = rng.integers(40, 230, 3)
    bg_bottom = np.clip(bg_top + rng.integers(-60, 61, 3), 0, 255)
    ramp = np.linspace(0, 1, s)[:, None, None]
    background = (bg_top * (1 - ramp) + bg_bottom * ramp).astype(np.uint8)
    canvas = Image.fromarray(np.repeat(background, s, axis=1))
    draw = ImageDraw.Draw(canvas)

    cx, cy = s / 2, s * 0.52
    face_w, face_h = s * rng.uniform(0.26, 0.33), s * rng.uniform(0.34, 0.40)
    skin = _jitter(rng, SKIN_TONES[rng.integers(len(SKIN_TONES))])
    hair = _jitter(rng, HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))], 12)
    hair_len = rng.uniform(0.0, 0.45)

    # hair behind the head, then ears, neck and face
    draw.ellipse(
        [cx - face_w * 1.18, cy - face_h * 1.18, cx + face_w * 1.18, cy + face_h * (0.2 + hair_len * 2)], fill=hair
    )
    draw.rectangle([cx - face_w * 0.45, cy + face_h * 0.6, cx + face_w * 0.45, s], fill=_jitter(rng, skin, 6))
    for side in (-1, 1):
        ex = cx + side * face_w * 0.98
        draw.ellipse([ex - face_w * 0.14, cy - face_h * 0.12, ex + face_w * 0.14, cy + face_h * 0.22], fill=skin)
    draw.ellipse([cx - face_w, cy - face_h, cx + face_w, cy + face_h], fill=skin)
    # fringe: a chord of hair over the forehead
    fringe = rng.uniform(0.55, 0.85)
    draw.chord(
        [cx - face_w * 1.05, cy - face_h * 1.12, cx + face_w * 1.05, cy - face_h * (2 * fringe - 1.2)],
        180,
        360,
        fill=hair,
    )

    eye_y = cy - face_h * rng.uniform(0.12, 0.22)
    eye_dx = face_w * rng.uniform(0.38, 0.48)
    eye_r = face_w * rng.uniform(0.11, 0.15)
    iris = _jitter(rng, IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))], 10)
    brow_lift = face_h * rng.uniform(0.12, 0.2)
    brow_tilt = rng.uniform(-0.08, 0.08) * face_h
    for side in (-1, 1):
        ex = cx + side * eye_dx
        draw.ellipse(
            [ex - eye_r * 1.4, eye_y - eye_r * 0.8, ex + eye_r * 1.4, eye_y + eye_r * 0.8], fill=(245, 245, 240)
        )
        draw.ellipse([ex - eye_r * 0.7, eye_y - eye_r * 0.7, ex + eye_r * 0.7, eye_y + eye_r * 0.7], fill=iris)
        draw.ellipse([ex - eye_r * 0.3, eye_y - eye_r * 0.3, ex + eye_r * 0.3, eye_y + eye_r * 0.3], fill=(10, 10, 10))
        by = eye_y - brow_lift
        draw.line(
            [ex - eye_r * 1.5, by + side * brow_tilt, ex + eye_r * 1.5, by - side * brow_tilt],
            fill=hair,
            width=max(2, int(s * 0.012)),
        )

    shade = tuple(int(c * 0.82) for c in skin)
    nose_len, nose_w = face_h * rng.uniform(0.22, 0.32), face_w * rng.uniform(0.12, 0.2)
    draw.polygon(
        [(cx, eye_y + face_h * 0.05), (cx - nose_w, eye_y + nose_len), (cx + nose_w, eye_y + nose_len)], fill=shade
    )

    mouth_y = cy + face_h * rng.uniform(0.45, 0.58)
    mouth_w, smile = face_w * rng.uniform(0.3, 0.5), face_h * rng.uniform(0.02, 0.14)
    lips = _jitter(rng, (170, 70, 70), 25)
    draw.chord([cx - mouth_w, mouth_y - smile, cx + mouth_w, mouth_y + smile * 1.5], 0, 180, fill=lips)

    # pose jitter: small rotation, scale and shift around the face centre
    angle = rng.uniform(-8, 8)
    scale = rng.uniform(0.92, 1.08)
    shift = rng.uniform(-0.03, 0.03, 2) * s
    fill = tuple(int(c) for c in bg_top)
    canvas = canvas.rotate(angle, resample=Image.BILINEAR, center=(cx, cy), translate=tuple(shift), fillcolor=fill)
    inverse_scale = (1 / scale, 0, cx - cx / scale, 0, 1 / scale, cy - cy / scale)
    canvas = canvas.transform((s, s), Image.AFFINE, inverse_scale, resample=Image.BILINEAR, fillcolor=fill)
    return np.asarray(canvas.resize((size, size), Image.LANCZOS), dtype=np.uint8)
