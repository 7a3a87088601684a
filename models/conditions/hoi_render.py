"""PAM's condition images from an HOI sequence: depth (inferno), segmentation (ADE20K palette) and hand keypoints
(HO-3D style skeleton), rendered on the CPU with numpy/OpenCV/torch, in the exact encodings the released PAM
weights were trained on (spec: papers/seed-002-pam.md section 3, read against github GasaiYU/PAM).

Segmentation (``colour_labels``), label map in DexYCB coding: 0 background, 255 hand, k = object id.
  style "dexycb":  PAM's convert_gray_to_color: colour = ADE20K[k] for objects, the hand ADE20K[149] = (92,0,255),
                   background black. DexYCB's YCB ids 1..21 give (180,120,120) ... (61,230,250).
  style "oakink2": PAM's OakInk2 renderer: black, then ADE20K from index 21: hands (both) (61,230,250), object
                   label L (2, 3, ... in object order) ADE20K[20 + L].
Hand keypoints (``draw_hand_keypoints``), PAM's showHandJoints: 21 joints drawn as filled circles of radius 3,
  then 20 limbs as filled ellipse polygons (cv2.ellipse2Poly, 1 degree steps) centred on the limb midpoint,
  semi-axes (length/2, 6 thumb / 3 other) ("oakink2": 4 / 2), only when 5 < length < 150 px; colour of joint or
  limb i = BASE[i // 4] + 35 (i % 4) per channel; limbs in reverse order (thumb on top) when joint 0 is nearer
  than joint 20. "dexycb" colours saturate at 255 (uint8 canvas); "oakink2" wrap modulo 256 (the reference draws
  on a float canvas and casts to uint8), and the right hand uses the white-red palette.
Depth (``colorize_depth``), DepthCrafter's visualisation: a per-video min-max normalised inverse depth (near is
  bright), index floor(255 v) into matplotlib's 256-entry inferno table, written as floor(255 c); background
  (label 0) black, as PAM's dataloader masks it (depth[seg == 0] = -1).
Geometry (``render_hoi_conditions``): meshes (objects, a MANO or user hand mesh) and, without MANO, a capsule-hand
  proxy built from the 21 joints are point-sampled (25,000 points each by default, seeded), projected and splatted
  as discs of radius 2 px with a per-pixel depth test; each label is then closed with a 3x3 kernel and components
  under 50 px are dropped (PAM's OakInk2 post-processing). Annotated label maps and depth (DexYCB) are used as
  given. Images are made at the camera's size and resized to the output size like PAM's dataloader: seg and
  keypoints NEAREST, depth bilinear then masked with the resized seg.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as Fnn

from .hoi import HAND_LABEL, HOIConditions, HOISequence

# ADE20K's 150-class palette (RGB, index 0..149), as PAM's CLASS_PROTOCAL lists it.
_ADE20K_HEX = (
    "787878b4787806e6e650323204c8037878508c8c8ccc05ffe6e6e604fa07e005ffebff0796053d78784608ff33ff06528fff8cccff04"
    "ff3307cc46030066c83de6faff06330b66ffff0747ff09e00907e6dcdcdcff095c7009ff08ffd607ffe0ffb8060aff47ff290a07ffff"
    "e0ff086608ffff3d06ffc207ff7a0800ff14ff0829ff05990633ffeb0cffa0961400a3ff8c8c8cfa0a0f14ff001fff00ff1f00ffe000"
    "99ff000000ffff470000ebff00adff1f00ff0bc8c8ff520000fff5003dff00ff7000ff85ff0000ffa300ff6600c2ff00008fff33ff00"
    "0052ff00ff2900ffad0a00ffadff0000ff99ff5c00ff00ffff00f5ff0066ffad00ff0014ffb8b8001fff00ff3d0047ffff00cc00ffc2"
    "00ff52000aff0070ff3300ff00c2ff007aff00ffa3ff990000ff0aff70008fff005200ffa3ff00ffeb0008b8aa8500ff00ff5cb800ff"
    "ff001f00b8ff00d6ffff00705cff0000e0ff70e0ff46b8a0a300ff9900ff47ff00ff00a3ffcc00ff008f00ffeb85ff00ff00ebf500ff"
    "ff007afff5000abed4d6ff0000ccff1400ffffff000099ff0029ff00ffcc2900ff29ff00ad00ff00f5ff4700ff7a00ff00ffb8005cff"
    "b8ff000085ffffd60019c2c266ff005c00ff"
)
# matplotlib's "inferno" (256 RGB entries, 6 decimals, CC0), the table DepthCrafter's visualisation indexes.
_INFERNO_E6 = (
    "001462000466013866002267001270018570003299002249024239004547003392030909006006004692038558007676006136046836"
    "009561007713055143011663009417063460013995011225071862016561013136080282019373015133088767022447017199097327"
    "025793019331105930029432021503114621033385023702123397037668025921132232042253028139141141046915030324150164"
    "051644032474159254056449034569168414061340036590177642066331038504186962071429040294196354076637041905205799"
    "081962043328215289087411044556224813092990045583234358098702046402243904104551047008253430110536047399262912"
    "116656047574272321122908047536281624129285047293290788135778046856299776142378046242308553149073045468317085"
    "155850044559325338162689043554333277169575042489340874176493041402348111183429040329354971190367039309361447"
    "197297038400367535204209037632373238211095037030378563217949036615383522224763036405388129231538036405392400"
    "238273036621396353244967037055400007251620037705403378258234038571406485264810039647409345271347040922411976"
    "277850042353414392284321043933416608290763045644418637297178047470420491303568049396422182309935051407423721"
    "316282053490425116322610055634426377328921057827427511335217060060428524341500062325429425347771064616430217"
    "354032066925430906360284069247431497366529071579431994372768073915432400379001076253432719385228078591432955"
    "391453080927433109397674083257433183403894085580433179410113087896433098416331090203432943422549092501432714"
    "428768094790432412434987097069432039441207099338431594447428101597431080453651103848430498459875106089429846"
    "466100108322429125472328110547428334478558112764427475484789114974426548491022117179425552497257119379424488"
    "503493121575423356509730123769422156515967125960420887522206128150419549528444130341418142534683132534416667"
    "540920134729415123547157136929413511553392139134411829559624141346410078565854143567408258572081145797406369"
    "578304148039404411584521150294402385590734152563400290596940154848398125603139157151395891609330159474393589"
    "615513161817391219621685164184388781627847166575386276633998168992383704640135171438381065646260173914378359"
    "652369176421375586658463178962372748664540181539369846670599184153366879676638186807363849682656189501360757"
    "688653192239357603694627195021354388700576197851351113706500200728347777712396203656344383718264206636340931"
    "724103209670337424729909212759333861735683215906330245741423219112326576747127222378322856752794225706319085"
    "758422229097315266764010232554311399769556236077307485775059239667303526780517243327299523785929247056295477"
    "791293250856291390796607254728287264801871258674283099807082262692278898812239266786274661817341270954270390"
    "822386275197266085827372279517261750832299283913257383837165288385252988841969292933248564846709297559244113"
    "851384302260239636855992307038235133860533311892230606865006316822226055869409321827221482873741326906216886"
    "878001332060212268882188337287207628886302342586202968890341347957198286894305353399193584898192358911188860"
    "902003364492184116905735370140179350909390375856174563912966381636169755916462387481164924919879393389160070"
    "923215399359155193926470405389150292929644411479145367932737417627140417935747423831135440938675430091130438"
    "941521436405125409944285442772120354946965449191115272949562455660110164952075462178105031954506468744099874"
    "956852475356094695959114482014089499961293488716084289963387495462079073965397502249073859967322509078068659"
    "969163515946063488970919522853058367972590529798053324974176536780048392975677543798043618977092550850039050"
    "978422557937034931979666565057031409980824572209028508981895579392026250982881586606024661983779593849023770"
    "984591601122023606985315608422024202985952615750025592986502623105027814986964630485030908987337637890034916"
    "987622645320039886987819652773045581987926660250051750987945667748058329987874675267065257987714682807072489"
    "987464690366079990987124697944087731986694705540095694986175713153103863985566720782112229984865728427120785"
    "984075736087129527983196743758138453982228751442147565981173759135156863980032766837166353978806774545176037"
    "977497782258185923976108789974196018974638797692206332973088805409216877971468813122227658969783820825238686"
    "968041828515249972966243836191261534964394843848273391962517851476285546960626859069298010958720866624310820"
    "956834874129323974954997881569337475953215888942351369951546896226365627950018903409380271948683910473395289"
    "947594917399410665946809924168426373946392930761442367946403937159458592946903943348474970947937949318491426"
    "949545955063507860951740960587524203954529965896540361957896971003556275961812975924571925966249980678587206"
    "971162985282602154976511989753616760982257994109631017988362998364644924"
)
ADE20K = np.frombuffer(bytes.fromhex("".join(_ADE20K_HEX)), np.uint8).reshape(150, 3)
INFERNO = np.array([int(_s[i:i + 6]) for _s in ["".join(_INFERNO_E6)] for i in range(0, len(_s), 6)],
                   np.float64).reshape(256, 3) / 1e6
INFERNO_U8 = np.floor(INFERNO * 255).astype(np.uint8)  # DepthCrafter writes (colour * 255).astype(uint8)

STYLES = ("dexycb", "oakink2")
KP_BASE = ((139, 53, 255), (0, 56, 255), (43, 140, 237), (37, 168, 36), (147, 147, 0), (70, 17, 145))
KP_RIGHT_OAKINK2 = ((255, 0, 0), (255, 85, 85), (255, 170, 170), (255, 255, 255), (200, 200, 200), (150, 150, 150))
LIMBS = ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
         (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20))
_KP_AXES = {"dexycb": (6, 3), "oakink2": (4, 2)}
DEPTH_KINDS = ("metric_depth", "disparity", "relative_depth")
DEPTH_RANGES = ("background_plane", "foreground", "frame", "fixed")
DEFAULT_SIZE = (480, 720)  # PAM's motion model, H x W
# Where the farthest foreground pixel sits in a rendered depth video by default: PAM's own validation depth video
# (DepthCrafter, whole frames normalised, then masked) has its foreground between inferno index 96 (5th
# percentile; 96 / 255 = 0.38) and 237 (95th), so rendered depth is spread over the same upper part.
FOREGROUND_FLOOR = 0.35


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")


# ------------------------------------------------------------------------------------------ segmentation
def seg_lut(style: str = "dexycb") -> np.ndarray:
    """[256,3] uint8: the colour of every label-map code (0 background, 255 hand, k objects) in a style."""
    _check_style(style)
    lut = np.zeros((256, 3), np.uint8)
    if style == "dexycb":
        lut[1:150] = ADE20K[1:150]
        lut[HAND_LABEL] = ADE20K[149]
    else:
        lut[1:130] = ADE20K[21:150]
        lut[1] = lut[HAND_LABEL] = ADE20K[21]
    return lut


def max_object_label(style: str) -> int:
    """Largest object label with a palette colour of its own (dexycb 148: 149 is the hand's; oakink2 129)."""
    return 148 if style == "dexycb" else 129


def colour_labels(labels, style: str = "dexycb") -> np.ndarray:
    """Label maps [...,H,W] (uint8 codes) -> colours [...,H,W,3] uint8."""
    return seg_lut(style)[np.asarray(labels, np.uint8)]


# ------------------------------------------------------------------------------------------ hand keypoints
def keypoint_colour(i: int, base=KP_BASE, wrap: bool = False) -> tuple[int, int, int]:
    """Colour of joint i (0..20) or limb i (0..19): base[i // 4] + 35 (i % 4), saturated at 255 or wrapped."""
    c = [v + 35 * (i % 4) for v in base[i // 4]]
    return tuple(v % 256 if wrap else min(v, 255) for v in c)


def draw_hand_keypoints(canvas: np.ndarray, joints_2d, joints_z=None, style: str = "dexycb",
                        side: str = "right") -> np.ndarray:
    """Draw one hand's 21 keypoints (pixel u, v) on canvas [H,W,3] uint8 (in place; returned). joints_z [21]
    (camera depth) enables the reverse limb order; a hand with a negative coordinate (DexYCB's -1 for a missing
    hand) or non-finite values draws nothing."""
    import cv2

    _check_style(style)
    p = np.asarray(joints_2d, np.float64)
    if p.shape != (21, 2):
        raise ValueError(f"joints_2d must be [21,2], got {p.shape}")
    if not np.isfinite(p).all() or (p == -1).any():
        return canvas
    base = KP_RIGHT_OAKINK2 if (style == "oakink2" and side == "right") else KP_BASE
    wrap = style == "oakink2"
    minor_thumb, minor = _KP_AXES[style]
    q = np.round(p).astype(np.int64)
    for j in range(21):
        cv2.circle(canvas, (int(q[j, 0]), int(q[j, 1])), 3, keypoint_colour(j, base, wrap), -1)
    order = range(len(LIMBS))
    if joints_z is not None and float(joints_z[0]) < float(joints_z[20]):
        order = reversed(order)
    for k in order:
        a, b = LIMBS[k]
        (ua, va), (ub, vb) = q[a], q[b]
        length = math.hypot(float(ua - ub), float(va - vb))
        if not 5 < length < 150:
            continue
        angle = math.degrees(math.atan2(float(va - vb), float(ua - ub)))
        # int() truncates toward zero, as the reference does for the centre, the half length and the angle
        poly = cv2.ellipse2Poly((int((ua + ub) / 2), int((va + vb) / 2)),
                                (int(length / 2), minor_thumb if k < 4 else minor), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, poly, keypoint_colour(k, base, wrap))
    return canvas


def merge_hand_images(images: list, nearer_first: list) -> np.ndarray:
    """Several hands drawn separately [H,W,3] -> one image: where one is drawn it wins; where several are, the
    first in ``nearer_first`` order (per pixel: a list of [H,W] index maps or one order for all pixels)."""
    out = np.zeros_like(images[0])
    drawn = [im.any(-1) for im in images]
    for rank in range(len(images) - 1, -1, -1):  # paint the farthest first
        for h, im in enumerate(images):
            sel = drawn[h] & (nearer_first[h] == rank)
            out[sel] = im[sel]
    return out


# ------------------------------------------------------------------------------------------ depth
def colorize_depth(values, mask=None, *, kind: str = "metric_depth", range_mode: str = "background_plane",
                   near: float = 0.3, far: float = 0.0) -> torch.Tensor:
    """Any depth or disparity video [F,H,W] -> PAM's depth condition [F,H,W,3] float 0..1.

    kind: metric_depth (metres, larger = farther; turned into inverse depth 1/z), disparity (larger = nearer,
    e.g. MiDaS / Depth Anything / DepthCrafter outputs; used as is), relative_depth (larger = farther, not
    metric; order flipped). mask [F,H,W]: the foreground (hand and objects); outside it the image is black.
    range_mode, over the whole video:
      frame             min/max over every pixel (DepthCrafter's rule: it normalised whole frames, then PAM
                        masked the background, so the foreground sits in the bright part)
      foreground        min/max over the foreground pixels
      background_plane  metric only: max over the foreground, min = a background plane at ``far`` metres
                        (0: placed so the farthest foreground point maps to FOREGROUND_FLOOR), the
                        rendered stand-in for 'frame'
      fixed             metric only: inverse depth between 1/far (dark) and 1/near (bright)"""
    if kind not in DEPTH_KINDS:
        raise ValueError(f"kind must be one of {', '.join(DEPTH_KINDS)}, got {kind!r}")
    if range_mode not in DEPTH_RANGES:
        raise ValueError(f"range_mode must be one of {', '.join(DEPTH_RANGES)}, got {range_mode!r}")
    d = values.detach().cpu().double().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, np.float64)
    if d.ndim == 2:
        d = d[None]
    if d.ndim != 3:
        raise ValueError(f"depth values must be [F,H,W], got shape {d.shape}")
    if mask is None:
        m = np.ones(d.shape, bool)
    else:
        m = (mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)) > 0.5
        m = m.reshape(d.shape) if m.size == d.size else None
        if m is None:
            raise ValueError(f"mask must match the depth's shape {d.shape}")
    if range_mode in ("background_plane", "fixed") and kind != "metric_depth":
        raise ValueError(f"range_mode '{range_mode}' needs metric depth; for {kind} use 'frame' or 'foreground'")
    if range_mode == "fixed" and not (0 < near < far):
        raise ValueError(f"range_mode 'fixed' needs 0 < near < far (metres), got near={near}, far={far}")
    ok = np.isfinite(d) & (d > 0) if kind == "metric_depth" else np.isfinite(d)
    fg = ok & m
    out = np.zeros(d.shape + (3,), np.uint8)

    def signal(x):  # larger = nearer
        return 1.0 / x if kind == "metric_depth" else x if kind == "disparity" else -x

    s_fg = signal(d[fg])
    if s_fg.size:
        if range_mode == "fixed":
            lo, hi = 1.0 / far, 1.0 / near
        elif range_mode == "background_plane":
            hi = float(s_fg.max())
            # auto: the plane where the farthest foreground point lands at FOREGROUND_FLOOR
            lo = 1.0 / far if far > 0 else (float(s_fg.min()) - FOREGROUND_FLOOR * hi) / (1 - FOREGROUND_FLOOR)
        elif range_mode == "foreground":
            lo, hi = float(s_fg.min()), float(s_fg.max())
        else:
            s_all = signal(d[ok])
            lo, hi = float(s_all.min()), float(s_all.max())
        v = np.clip((s_fg - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.ones_like(s_fg)
        out[fg] = INFERNO_U8[np.floor(v * 255).astype(np.int64)]
    return torch.from_numpy(out.astype(np.float32) / 255.0)


# ------------------------------------------------------------------------------------------ point splatting
def disc_offsets(radius: int) -> np.ndarray:
    """(dy, dx) pixel offsets of a filled cv2.circle of this radius (PAM splats points with cv2.circle)."""
    import cv2

    r = int(radius)
    a = np.zeros((2 * r + 3, 2 * r + 3), np.uint8)
    cv2.circle(a, (r + 1, r + 1), r, 1, -1)
    return np.argwhere(a > 0) - (r + 1)


def splat(uv: np.ndarray, z: np.ndarray, labels: np.ndarray, height: int, width: int,
          radius: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Project-and-splat with a depth test: every point (pixel uv [N,2], depth z [N] > 0, label [N]) covers the
    disc of ``radius`` around round(uv); each pixel keeps the nearest point. Returns (depth [H,W] float64, inf
    where empty; labels [H,W] uint8, 0 where empty)."""
    zbuf = np.full(height * width, np.inf)
    lab = np.zeros(height * width, np.uint8)
    keep = (z > 1e-6) & np.isfinite(uv).all(1)
    if not keep.any():
        return zbuf.reshape(height, width), lab.reshape(height, width)
    c = np.round(uv[keep]).astype(np.int64)
    zk, lk = z[keep], labels[keep]
    off = disc_offsets(radius)
    rows = (c[:, 1][None] + off[:, :1]).reshape(-1)
    cols = (c[:, 0][None] + off[:, 1:]).reshape(-1)
    zz = np.broadcast_to(zk[None], (len(off), len(zk))).reshape(-1)
    ll = np.broadcast_to(lk[None], (len(off), len(lk))).reshape(-1)
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    pix, zz, ll = rows[inside] * width + cols[inside], zz[inside], ll[inside]
    np.minimum.at(zbuf, pix, zz)
    win = zz <= zbuf[pix]
    lab[pix[win]] = ll[win]
    return zbuf.reshape(height, width), lab.reshape(height, width)


def postprocess_labels(labels: np.ndarray, min_area: int = 50, k: int = 3) -> np.ndarray:
    """PAM's clean-up of a splatted label map: per label (ascending), a k x k morphological close, then connected
    components (8-connected) under min_area pixels dropped; later labels overwrite earlier ones."""
    import cv2

    kernel = np.ones((k, k), np.uint8)
    out = np.zeros_like(labels)
    for lbl in np.flatnonzero(np.bincount(labels.ravel(), minlength=256)):
        if lbl == 0:
            continue
        binm = cv2.morphologyEx((labels == lbl).astype(np.uint8) * 255, cv2.MORPH_CLOSE, kernel, iterations=1)
        num, cc, stats, _ = cv2.connectedComponentsWithStats(binm, connectivity=8)
        big = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] >= min_area)
        big = big[big > 0]
        out[np.isin(cc, big)] = lbl
    return out


# ------------------------------------------------------------------------------------------ surface samples
class MeshSampler:
    """Fixed surface samples of a mesh of fixed topology (triangle index + barycentric coordinates, area
    weighted on the first vertex set), re-evaluated on any later vertex positions, so a moving or deforming
    mesh keeps the same points from frame to frame."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray | None, n: int, rng: np.random.Generator):
        v = np.asarray(vertices, np.float64)
        if faces is None or len(faces) == 0:  # a point cloud: its points
            self.faces, self.tri, self.bary = None, None, None
            self.idx = np.arange(len(v)) if len(v) <= n else np.sort(rng.choice(len(v), n, replace=False))
            return
        f = np.asarray(faces, np.int64)
        a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
        area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
        if area.sum() <= 0:
            raise ValueError("mesh has zero surface area")
        self.faces = f
        self.tri = rng.choice(len(f), size=n, p=area / area.sum())
        r1, r2 = np.sqrt(rng.random(n)), rng.random(n)
        self.bary = np.stack([1 - r1, r1 * (1 - r2), r1 * r2], 1)

    def points(self, vertices: np.ndarray) -> np.ndarray:
        v = np.asarray(vertices, np.float64)
        if self.faces is None:
            return v[self.idx]
        tri = self.faces[self.tri]
        return (v[tri] * self.bary[..., None]).sum(1)


HAND_BONES = LIMBS  # one capsule per limb of the drawing
PALM = ((0, 5, 9), (0, 9, 13), (0, 13, 17))  # palm triangles (wrist, MCPs), thickened into a slab


def capsule_radii(joints: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-bone capsule radius [20] and the palm's half-thickness for 21 joints, scaled with the palm length L
    (wrist to middle MCP): thumb 0.11 L, fingers 0.09 L (about 10 and 8 mm on a 9 cm palm), palm 0.12 L."""
    L = float(np.linalg.norm(joints[9] - joints[0])) or 1.0
    r = np.full(len(HAND_BONES), 0.09 * L)
    r[:4] = 0.11 * L
    return r, 0.12 * L


class CapsuleHandSampler:
    """Fixed parametric samples on the capsule-hand proxy (a capsule per bone, the palm a thick slab), evaluated
    on each frame's 21 joints: hand silhouettes and depth without MANO. Coarser than a MANO mesh (no knuckles,
    flat palm)."""

    def __init__(self, n: int, rng: np.random.Generator, reference_joints: np.ndarray):
        r, h = capsule_radii(reference_joints)
        a = reference_joints[[i for i, _ in HAND_BONES]]
        b = reference_joints[[j for _, j in HAND_BONES]]
        length = np.linalg.norm(b - a, axis=1)
        cap = 2 * np.pi * r * length + 4 * np.pi * r * r
        tri = [reference_joints[list(t)] for t in PALM]
        tri_area = np.array([0.5 * np.linalg.norm(np.cross(t[1] - t[0], t[2] - t[0])) for t in tri])
        weights = np.concatenate([cap, 2 * tri_area])
        self.kind = rng.choice(len(weights), size=n, p=weights / weights.sum())
        self.u = rng.random(n)          # along the bone / barycentric
        self.w = rng.random(n)
        self.side = rng.random(n)       # cylinder vs end caps / palm top vs bottom
        self.phi = rng.random(n) * 2 * np.pi
        self.sphere = rng.normal(size=(n, 3))
        self.sphere /= np.linalg.norm(self.sphere, axis=1, keepdims=True)
        self.cyl_frac = np.concatenate([2 * np.pi * r * length / np.maximum(cap, 1e-12), np.zeros(len(PALM))])

    def points(self, joints: np.ndarray) -> np.ndarray:
        j = np.asarray(joints, np.float64)
        r, h = capsule_radii(j)
        nb = len(HAND_BONES)
        out = np.zeros((len(self.kind), 3))
        bone = self.kind < nb
        k = self.kind[bone]
        a = j[[HAND_BONES[i][0] for i in k]]
        b = j[[HAND_BONES[i][1] for i in k]]
        d = b - a
        ln = np.linalg.norm(d, axis=1, keepdims=True)
        axis = d / np.maximum(ln, 1e-12)
        helper = np.where(np.abs(axis[:, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]])
        e1 = np.cross(axis, helper)
        e1 /= np.maximum(np.linalg.norm(e1, axis=1, keepdims=True), 1e-12)
        e2 = np.cross(axis, e1)
        rr = r[k][:, None]
        cyl = self.side[bone] < self.cyl_frac[k]
        ring = np.cos(self.phi[bone])[:, None] * e1 + np.sin(self.phi[bone])[:, None] * e2
        p_cyl = a + self.u[bone][:, None] * d + rr * ring
        s = self.sphere[bone]
        p_cap = np.where(((s * axis).sum(1) > 0)[:, None], b, a) + rr * s
        out[bone] = np.where(cyl[:, None], p_cyl, p_cap)
        palm = ~bone
        t = np.array([PALM[i - nb] for i in self.kind[palm]])
        p0, p1, p2 = j[t[:, 0]], j[t[:, 1]], j[t[:, 2]]
        s1 = np.sqrt(self.u[palm])[:, None]
        q = (1 - s1) * p0 + s1 * (1 - self.w[palm])[:, None] * p1 + s1 * self.w[palm][:, None] * p2
        nrm = np.cross(p1 - p0, p2 - p0)
        nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
        out[palm] = q + np.where((self.side[palm] < 0.5)[:, None], h, -h) * nrm
        return out


# ------------------------------------------------------------------------------------------ the renderer
def _mano_for(mano, side: str):
    if mano is None:
        return None
    if isinstance(mano, dict):
        return mano.get(side)
    return mano if getattr(mano, "side", side) == side else None


def hand_geometry(seq: HOISequence, mano=None) -> list[dict]:
    """Per hand: world joints [F,21,3] (or None), mesh vertices [F,V,3] and faces (or None), from the hand's own
    joints/mesh or, where missing, its MANO parameters run through the matching MANO model (``mano``: a
    ManoModel, or {"right": ..., "left": ...})."""
    out = []
    for i, h in enumerate(seq.hands):
        joints, verts, faces = h.joints, h.vertices, h.faces
        if h.mano is not None and (joints is None or verts is None):
            model = _mano_for(mano, h.side)
            if model is not None:
                m = h.mano
                with torch.no_grad():
                    v, j = model(torch.from_numpy(m.pose).float(), torch.from_numpy(np.atleast_2d(m.betas)).float(),
                                 torch.from_numpy(m.trans).float(), pose_space=m.pose_space,
                                 flat_hand_mean=m.flat_hand_mean, center_idx=m.center_idx)
                joints = j.double().numpy() if joints is None else joints
                if verts is None:
                    verts, faces = v.double().numpy(), model.faces.numpy()
            elif joints is None and h.joints_2d is None:
                raise ValueError(f"hands[{i}] ({h.side}) has only MANO parameters; give a converted MANO model "
                                 f"(models/interplay/mano/mano_{h.side}.safetensors, MANO Convert node) or 21 joints")
        out.append(dict(joints=joints, vertices=verts, faces=faces))
    return out


def project_joints(seq: HOISequence, mano=None, geometry: list | None = None
                   ) -> list[tuple[np.ndarray | None, np.ndarray | None]]:
    """Per hand: (pixels [F,21,2], camera depth [F,21]) of its joints; annotated joints_2d win for pixels.
    ``geometry``: hand_geometry's result when already computed."""
    out = []
    for h, g in zip(seq.hands, geometry if geometry is not None else hand_geometry(seq, mano)):
        uv = z = None
        if g["joints"] is not None:
            cam = np.stack([seq.camera.to_camera(g["joints"][f], f) for f in range(seq.num_frames)])
            uv, z = zip(*(seq.camera.project(cam[f], f) for f in range(seq.num_frames)))
            uv, z = np.stack(uv), np.stack(z)
        if h.joints_2d is not None:
            uv = h.joints_2d
        out.append((uv, z))
    return out


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """The source index torch's nearest interpolation takes for each output index (exact: torch computes it)."""
    src = torch.arange(n_in, dtype=torch.float64).reshape(1, 1, n_in)
    return Fnn.interpolate(src, size=n_out, mode="nearest")[0, 0].round().long().numpy()


def resize_nearest(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """[F,H,W] or [F,H,W,C] -> the same at height x width with torch's nearest rule (torchvision's
    InterpolationMode.NEAREST on tensors, what PAM's dataloader uses), by index: no value changes."""
    if x.shape[1:3] == (height, width):
        return x
    iy, ix = _nearest_index(x.shape[1], height), _nearest_index(x.shape[2], width)
    return np.ascontiguousarray(x[:, iy][:, :, ix])


def render_hoi_conditions(seq: HOISequence, *, size: tuple[int, int] = DEFAULT_SIZE, style: str = "dexycb",
                          depth_range: str = "background_plane", near: float = 0.3, far: float = 0.0,
                          points: int = 25000, radius: int = 2, min_area: int = 50, seed: int = 0, mano=None,
                          use_annotations: bool = True) -> HOIConditions:
    """Render PAM's depth, segmentation and hand-keypoint videos of ``seq`` (see the module docstring).

    size (H, W) of the output (PAM's motion model: 480 x 720); images are made at the camera's size first.
    depth_range, near, far: colorize_depth's range_mode and its parameters (metres). points, radius, min_area:
    splatting (points per mesh or capsule hand, disc radius px, smallest kept component px). seed fixes the
    surface samples. mano: ManoModel(s) for hands given as MANO parameters. use_annotations: take the
    sequence's annotated label maps and depth (DexYCB) instead of rendering them."""
    from .. import runtime

    _check_style(style)
    H, W = seq.camera.height, seq.camera.width
    out_h, out_w = int(size[0]), int(size[1])
    if not (8 <= out_h <= 8192 and 8 <= out_w <= 8192):
        raise ValueError(f"output size must be between 8 and 8192 px per side, got {out_h}x{out_w}")
    top = max_object_label(style)
    for o in seq.objects:
        if o.label > top:
            raise ValueError(f"object '{o.name or o.label}': label {o.label} has no {style} palette colour "
                             f"(1..{top}); relabel the object")
    F = seq.num_frames
    geo = hand_geometry(seq, mano)
    rng = np.random.default_rng(int(seed))
    hand_samplers = []
    for h, g in zip(seq.hands, geo):
        if g["vertices"] is not None:
            hand_samplers.append(("mesh", MeshSampler(g["vertices"][0], g["faces"], points, rng)))
        elif g["joints"] is not None:
            first = int(np.flatnonzero(h.valid)[0]) if h.valid.any() else 0
            hand_samplers.append(("capsule", CapsuleHandSampler(points, rng, g["joints"][first])))
        else:
            hand_samplers.append((None, None))
    obj_samplers = [MeshSampler(o.vertices, o.faces, points, rng) if o.vertices is not None else None
                    for o in seq.objects]
    annotated_seg = use_annotations and seq.seg is not None
    annotated_depth = use_annotations and seq.depth is not None
    kp_2d = project_joints(seq, geometry=geo)
    labels = np.zeros((F, H, W), np.uint8)
    depth = np.zeros((F, H, W), np.float32)
    hand_img = np.zeros((F, H, W, 3), np.uint8)
    tick = runtime.progress(total=F, desc="HOI conditions")
    import cv2

    for f in range(F):
        pts, labs, hand_z = [], [], []
        for k, (h, g, (kind, smp)) in enumerate(zip(seq.hands, geo, hand_samplers)):
            if smp is None or not h.valid[f]:
                hand_z.append(None)
                continue
            world = smp.points(g["vertices"][f] if kind == "mesh" else g["joints"][f])
            p = seq.camera.to_camera(world, f)
            pts.append(p)
            labs.append(np.full(len(p), HAND_LABEL, np.uint8))
            if len(seq.hands) > 1:  # each hand's own depth orders overlapping keypoint drawings
                uv, z = seq.camera.project(p, f)
                hand_z.append(splat(uv, z, labs[-1], H, W, radius)[0])
            else:
                hand_z.append(None)
        for o, smp in zip(seq.objects, obj_samplers):
            if smp is None:
                continue
            local = smp.points(o.vertices)
            world = local @ o.pose[f, :3, :3].T + o.pose[f, :3, 3]
            p = seq.camera.to_camera(world, f)
            pts.append(p)
            labs.append(np.full(len(p), o.label, np.uint8))
        zbuf = np.full((H, W), np.inf)
        lab = np.zeros((H, W), np.uint8)
        if pts:
            p = np.concatenate(pts)
            uv, z = seq.camera.project(p, f)
            zbuf, lab = splat(uv, z, np.concatenate(labs), H, W, radius)
            lab = postprocess_labels(lab, min_area=min_area)
        if annotated_seg:
            lab = seq.seg[f]
        if annotated_depth:
            d = seq.depth[f].astype(np.float64)
        else:
            # pixels the close added have no point: take the closed inverse depth of their neighbours
            s = np.where(np.isfinite(zbuf), 1.0 / np.where(np.isfinite(zbuf), zbuf, 1.0), 0.0).astype(np.float32)
            s = np.where(s > 0, s, cv2.morphologyEx(s, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8)))
            d = np.where(s > 0, 1.0 / np.maximum(s, 1e-12), 0.0)
        labels[f] = lab
        depth[f] = np.where(lab > 0, d, 0.0)
        drawn, keys = [], []
        for k, (h, (uv, z)) in enumerate(zip(seq.hands, kp_2d)):
            if uv is None or not h.valid[f]:
                continue
            canvas = draw_hand_keypoints(np.zeros((H, W, 3), np.uint8), uv[f], None if z is None else z[f],
                                         style=style, side=h.side)
            drawn.append(canvas)
            mean_z = float(np.mean(z[f])) if z is not None else float(k)
            hz = hand_z[k] if k < len(hand_z) and hand_z[k] is not None else np.full((H, W), np.inf)
            keys.append(np.where(np.isfinite(hz), hz, 1e6 + mean_z))
        if len(drawn) == 1:
            hand_img[f] = drawn[0]
        elif drawn:
            ranks = np.argsort(np.argsort(np.stack(keys), axis=0, kind="stable"), axis=0, kind="stable")
            hand_img[f] = merge_hand_images(drawn, list(ranks))
        tick.update(1)
    tick.close()
    fg = labels > 0
    depth_img = colorize_depth(depth, fg, kind="metric_depth", range_mode=depth_range, near=near, far=far)
    from ..video_io import resize_frames

    labels_r = resize_nearest(labels, out_h, out_w)
    mask_r = torch.from_numpy(labels_r > 0)
    depth_img = resize_frames(depth_img, out_h, out_w) * mask_r[..., None]
    seg = torch.from_numpy(colour_labels(labels_r, style).astype(np.float32) / 255.0)
    hand = torch.from_numpy(resize_nearest(hand_img, out_h, out_w).astype(np.float32) / 255.0)
    depth_raw = torch.from_numpy(resize_nearest(depth, out_h, out_w))
    meta = dict(style=style, depth_range=depth_range, render_size=[H, W], size=[out_h, out_w],
                annotated_seg=bool(annotated_seg), annotated_depth=bool(annotated_depth),
                hand_geometry=[k for k, _ in hand_samplers], source=seq.meta.get("source", ""),
                non_physical=bool(seq.meta.get("non_physical", False)))
    return HOIConditions(depth=depth_img.contiguous(), seg=seg, hand=hand, fps=seq.fps, mask=mask_r.float(),
                         labels=torch.from_numpy(labels_r.astype(np.int16)), depth_raw=depth_raw, meta=meta)
