"""MANO hand model: a one-time converter of the user's own MANO files to safetensors, and the MANO layer in torch.

MANO (MPI, mano.is.tue.mpg.de) is licence-restricted: the pack never ships it. The user downloads
``mano_v1_2.zip`` and converts ``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl`` once (``convert_mano`` or the MANO Convert
node); the result, ``mano_right.safetensors`` / ``mano_left.safetensors`` under ``models/interplay/mano/``, is what
``ManoModel.from_file`` reads. Sources accepted by the converter, in order of preference:

1. an ``.npz`` (read with ``allow_pickle=False``) holding the arrays below, e.g. exported by the user where they
   already load MANO (smplx, manopth)::

       np.savez("mano_right.npz", v_template=..., shapedirs=..., posedirs=..., J_regressor=<dense [16,778]>,
                weights=..., f=..., kintree_table=..., hands_components=..., hands_mean=...)

2. the original ``MANO_*.pkl``, read by ``read_mano_pickle``: a restricted unpickler whose ``find_class`` resolves
   only numpy's array reconstruction, and inert stand-ins for ``chumpy`` arrays and ``scipy.sparse`` matrices
   (their stored arrays are kept, no code of theirs runs; neither package is needed). Any other global (a
   function, ``os.system``, ``builtins.eval``...) is refused by name, so a crafted file cannot execute code.

Layer (``ManoModel``), the standard MANO linear blend skinning (as smplx/manopth compute it):
  v_shaped = v_template + shapedirs . betas;  J = J_regressor . v_shaped  (16 joints)
  R = rotations of the 16 joints (global first);  v_posed = v_shaped + posedirs . vec(R[1:] - I)
  G_k = G_parent(k) [R_k | J_k - J_parent(k)];  skin with ``weights`` the transforms G_k [I | -J_k]
Output joints: the 16 posed MANO joints plus 5 fingertip vertices (745 thumb, 317 index, 444 middle, 556 ring,
673 little), reordered to the drawing / DexYCB / manopth order: wrist, thumb MCP..tip, index, middle, ring,
little (``TO_DRAWING_ORDER``). Units are the model's (metres for the MPI files).
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import weights as W
from .rotations import axis_angle_to_matrix, quaternion_to_matrix

MANO_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "f", "kintree_table",
             "hands_components", "hands_mean")
TIP_VERTICES = (745, 317, 444, 556, 673)  # thumb, index, middle, ring, little
# MANO joints are wrist, index1-3, middle1-3, little1-3, ring1-3, thumb1-3; tips appended as 16..20
TO_DRAWING_ORDER = (0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20)
FORMAT = "interplay-mano"
POSE_SPACES = ("axis_angle", "quat", "pca")


class ManoFileError(ValueError):
    """A MANO source or converted file that cannot be used; the message names the file and the fix."""


# ------------------------------------------------------------------------------- restricted unpickler
class _Inert:
    """Stand-in for a chumpy / scipy object in a MANO pickle: keeps the pickled state, runs nothing."""

    def __init__(self, *args):
        self._args = args
        self._state = None

    def __setstate__(self, state):
        self._state = state

    def __reduce__(self):  # never re-pickled
        raise TypeError("inert MANO stand-in")


class _Chumpy(_Inert):
    pass


class _Sparse(_Inert):
    pass


def _reconstructor(cls, base, state):
    """Python 2 copy_reg._reconstructor, limited to the inert classes (numpy arrays use _reconstruct)."""
    if not (isinstance(cls, type) and issubclass(cls, _Inert)) or base is not object:
        raise pickle.UnpicklingError(f"refused copy_reg._reconstructor({cls!r}, {base!r})")
    obj = object.__new__(cls)
    obj._args, obj._state = (), None
    return obj


def _numpy_globals() -> dict:
    out = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(mod, "_reconstruct")] = _np_reconstruct
        out[(mod, "scalar")] = _np_scalar
    return out


def _np_reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"refused numpy array subclass {subtype!r}")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _latin1_bytes(text, encoding="latin1"):
    """_codecs.encode as Python 3 protocol-2 pickles use it to store bytes; latin-1 only."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refused _codecs.encode(..., {encoding!r})")
    return text.encode("latin1")


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError("refused a numpy object scalar")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        table = _numpy_globals()
        table[("copy_reg", "_reconstructor")] = table[("copyreg", "_reconstructor")] = _reconstructor
        for mod in ("__builtin__", "builtins"):  # plain constructors chumpy's pickled state may use
            table[(mod, "object")], table[(mod, "set")], table[(mod, "frozenset")] = object, set, frozenset
        table[("_codecs", "encode")] = _latin1_bytes
        if (module, name) in table:
            return table[(module, name)]
        if module == "chumpy" or module.startswith("chumpy."):
            return _Chumpy
        if module.startswith("scipy.sparse") and name in ("csc_matrix", "csr_matrix"):
            return _Sparse
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a MANO file (only numpy arrays, "
                                     "chumpy arrays and scipy sparse matrices)")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed in a MANO file")


def _as_array(value, key: str, path: Path) -> np.ndarray:
    """A MANO pickle value (array, chumpy stand-in, sparse stand-in, list) as a dense numpy array."""
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise ManoFileError(f"{path}: '{key}' is an object array")
        return value
    if isinstance(value, _Sparse):
        st = value._state if isinstance(value._state, dict) else {}
        shape = st.get("_shape", st.get("shape"))
        try:
            data, indices, indptr = (np.asarray(st[k]) for k in ("data", "indices", "indptr"))
            rows, cols = (int(s) for s in shape)
        except (KeyError, TypeError, ValueError) as ex:
            raise ManoFileError(f"{path}: '{key}' is a sparse matrix whose stored state is not understood "
                                f"({ex}); export the arrays to .npz instead (see models/conditions/mano.py)") from ex
        dense = np.zeros((rows, cols), np.float64)
        csc = st.get("format", "csc") != "csr"
        n = cols if csc else rows
        if len(indptr) != n + 1 or indptr[-1] != len(data) or len(indices) != len(data):
            raise ManoFileError(f"{path}: '{key}' sparse arrays are inconsistent")
        for j in range(n):
            sl = slice(int(indptr[j]), int(indptr[j + 1]))
            if csc:
                dense[indices[sl], j] = data[sl]
            else:
                dense[j, indices[sl]] = data[sl]
        return dense
    if isinstance(value, _Chumpy):
        st = value._state if isinstance(value._state, dict) else {}
        for k in ("x", "_x", "r"):
            if isinstance(st.get(k), np.ndarray):
                return st[k]
        arrays = [v for v in st.values() if isinstance(v, np.ndarray)]
        if len(arrays) == 1:
            return arrays[0]
        raise ManoFileError(f"{path}: '{key}' is a chumpy expression, not a stored array; export the arrays to "
                            ".npz where chumpy is installed (see models/conditions/mano.py)")
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as ex:
        raise ManoFileError(f"{path}: '{key}' is not an array ({type(value).__name__})") from ex


def read_mano_pickle(path) -> dict:
    """The arrays of an original MANO_*.pkl, read with the restricted unpickler (see the module docstring)."""
    path = Path(path)
    try:
        data = _RestrictedUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except pickle.UnpicklingError as ex:
        raise ManoFileError(f"{path}: refused or unreadable MANO pickle: {ex}") from ex
    except Exception as ex:  # truncated or not a pickle at all
        raise ManoFileError(f"{path}: not a readable MANO pickle ({type(ex).__name__}: {ex})") from ex
    if not isinstance(data, dict):
        raise ManoFileError(f"{path}: expected a dict of MANO arrays, got {type(data).__name__}")
    return {k: _as_array(data[k], k, path) for k in MANO_KEYS if k in data}


def read_mano_source(path) -> dict:
    """MANO arrays from a user's .npz (no pickles) or .pkl (restricted unpickler)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MANO source {path} not found")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files if k in MANO_KEYS}
        except Exception as ex:
            raise ManoFileError(f"{path}: not a readable .npz without pickles ({type(ex).__name__}: {ex})") from ex
    if suffix == ".pkl":
        return read_mano_pickle(path)
    raise ManoFileError(f"{path}: expected MANO_RIGHT.pkl / MANO_LEFT.pkl or an .npz export, got '{suffix}'")


def validate_mano_arrays(arrays: dict, where: str = "MANO") -> dict:
    """Check the shapes against each other; returns float32/int64 copies. Raises ManoFileError naming the key."""
    missing = [k for k in MANO_KEYS if k not in arrays]
    if missing:
        raise ManoFileError(f"{where}: missing {', '.join(missing)}; a MANO model holds {', '.join(MANO_KEYS)}")
    a = {k: np.asarray(arrays[k]) for k in MANO_KEYS}
    v = a["v_template"]
    if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] <= max(TIP_VERTICES):
        raise ManoFileError(f"{where}: v_template must be [V,3] with V > {max(TIP_VERTICES)}, got {v.shape}")
    V = v.shape[0]
    J = a["J_regressor"].shape[0] if a["J_regressor"].ndim == 2 else -1
    checks = {"shapedirs": a["shapedirs"].ndim == 3 and a["shapedirs"].shape[:2] == (V, 3),
              "posedirs": a["posedirs"].shape == (V, 3, 9 * (J - 1)),
              "J_regressor": a["J_regressor"].shape == (16, V),
              "weights": a["weights"].shape == (V, 16),
              "f": a["f"].ndim == 2 and a["f"].shape[1] == 3,
              "kintree_table": a["kintree_table"].shape == (2, 16),
              "hands_components": a["hands_components"].shape == (45, 45),
              "hands_mean": a["hands_mean"].reshape(-1).shape == (45,)}
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise ManoFileError(f"{where}: unexpected shapes for {', '.join(f'{k} {a[k].shape}' for k in bad)} "
                            f"(V = {V}, 16 joints)")
    f = a["f"].astype(np.int64)
    if f.min() < 0 or f.max() >= V:
        raise ManoFileError(f"{where}: faces index vertices outside 0..{V - 1}")
    parents = a["kintree_table"][0].astype(np.int64)
    if not all(parents[k] < k for k in range(1, 16)):
        raise ManoFileError(f"{where}: kintree_table parents must precede their children, got {parents.tolist()}")
    out = {k: a[k].astype(np.float32) for k in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights",
                                                 "hands_components")}
    out["hands_mean"] = a["hands_mean"].reshape(45).astype(np.float32)
    out["f"] = f
    out["parents"] = parents
    return out


def convert_mano(src, dst, side: str | None = None) -> Path:
    """Convert a user's MANO file (.pkl or .npz) to a safetensors file at dst (written atomically).
    ``side`` ("right"/"left") defaults to the file name (MANO_RIGHT / MANO_LEFT)."""
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    if side is None:
        name = src.name.lower()
        side = "left" if "left" in name else "right" if "right" in name else None
    if side not in ("right", "left"):
        raise ManoFileError(f"{src}: say which hand it is (side='right' or 'left'); the name does not tell")
    arrays = validate_mano_arrays(read_mano_source(src), where=str(src))
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "side": side, "source": src.name})
    tmp.replace(dst)
    return dst


# ------------------------------------------------------------------------------------------- layer
class ManoModel(nn.Module):
    """MANO LBS. forward(pose, betas=None, trans=None, pose_space="axis_angle", flat_hand_mean=True,
    center_idx=None) -> (vertices [B,V,3], joints [B,21,3] in TO_DRAWING_ORDER).

    pose: axis_angle [B,16,3] or [B,48] (global rotation first); quat [B,16,4] (w,x,y,z); pca [B,3+k] (global
    axis-angle, then k <= 45 PCA coefficients of the 15 finger joints, as DexYCB's pose_m[:, :48]).
    flat_hand_mean=False adds MANO's mean finger pose to axis-angle/pca poses (manopth's default; DexYCB uses
    it; OakInk2 uses True). center_idx=j subtracts joint j (drawing order) before adding trans (manotorch's
    center_idx=0, OakInk2's convention)."""

    def __init__(self, arrays: dict, side: str = "right"):
        super().__init__()
        a = validate_mano_arrays(arrays)
        self.side = side
        for k in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "hands_components",
                  "hands_mean"):
            self.register_buffer(k, torch.from_numpy(a[k]))
        self.register_buffer("faces", torch.from_numpy(a["f"]))
        self.register_buffer("parents", torch.from_numpy(a["parents"]))

    @classmethod
    def from_file(cls, path) -> "ManoModel":
        sd, meta = W.read_safetensors(path, what="MANO model")
        if meta.get("format") != FORMAT:
            raise ManoFileError(f"{path}: not a converted MANO file (metadata format {meta.get('format')!r}); "
                                "convert MANO_RIGHT.pkl / MANO_LEFT.pkl with the MANO Convert node first")
        arrays = {k: sd[k].numpy() for k in sd}
        arrays["kintree_table"] = np.stack([arrays.pop("parents"), np.arange(16)])
        return cls(arrays, side=meta.get("side", "right"))

    @property
    def num_betas(self) -> int:
        return int(self.shapedirs.shape[-1])

    def rotations(self, pose: torch.Tensor, pose_space: str = "axis_angle", flat_hand_mean: bool = True):
        """The 16 joint rotations [B,16,3,3] of a pose in any accepted space."""
        if pose_space not in POSE_SPACES:
            raise ValueError(f"pose_space must be one of {', '.join(POSE_SPACES)}, got {pose_space!r}")
        pose = pose.to(self.v_template.dtype)
        B = pose.shape[0]
        if pose_space == "quat":
            if pose.shape[1:] != (16, 4):
                raise ValueError(f"quat pose must be [B,16,4], got {tuple(pose.shape)}")
            return quaternion_to_matrix(pose)
        if pose_space == "pca":
            k = pose.shape[1] - 3
            if pose.dim() != 2 or not 0 <= k <= 45:
                raise ValueError(f"pca pose must be [B,3+k] with k <= 45, got {tuple(pose.shape)}")
            fingers = pose[:, 3:] @ self.hands_components[:k]
            aa = torch.cat([pose[:, :3], fingers], 1)
        else:
            aa = pose.reshape(B, -1)
            if aa.shape[1] != 48:
                raise ValueError(f"axis_angle pose must be [B,16,3] or [B,48], got {tuple(pose.shape)}")
        if not flat_hand_mean:
            aa = torch.cat([aa[:, :3], aa[:, 3:] + self.hands_mean], 1)
        return axis_angle_to_matrix(aa.reshape(B, 16, 3))

    def forward(self, pose, betas=None, trans=None, pose_space: str = "axis_angle", flat_hand_mean: bool = True,
                center_idx: int | None = None):
        dtype = self.v_template.dtype
        pose = torch.as_tensor(pose, dtype=dtype)
        B = pose.shape[0]
        R = self.rotations(pose, pose_space, flat_hand_mean)                               # [B,16,3,3]
        betas = torch.zeros(B, self.num_betas, dtype=dtype) if betas is None else torch.as_tensor(betas, dtype=dtype)
        betas = betas.reshape(-1, betas.shape[-1]).expand(B, -1)
        S = betas.shape[1]
        if S > self.num_betas:
            raise ValueError(f"betas has {S} values, the MANO file {self.num_betas}")
        # 1. shape blend and rest joints
        v = self.v_template + torch.einsum("vcs,bs->bvc", self.shapedirs[..., :S], betas)    # [B,V,3]
        J = torch.einsum("jv,bvc->bjc", self.J_regressor, v)                                 # [B,16,3]
        # 2. pose blend
        eye = torch.eye(3, dtype=dtype)
        feat = (R[:, 1:] - eye).reshape(B, -1)                                                # [B,135]
        v = v + torch.einsum("vcp,bp->bvc", self.posedirs, feat)
        # 3. kinematic chain
        G = [None] * 16
        for k in range(16):
            T = torch.zeros(B, 4, 4, dtype=dtype)
            T[:, :3, :3] = R[:, k]
            p = int(self.parents[k]) if k else -1
            T[:, :3, 3] = J[:, k] - (J[:, p] if k else 0)
            T[:, 3, 3] = 1
            G[k] = T if k == 0 else G[p] @ T
        G = torch.stack(G, 1)                                                                 # [B,16,4,4]
        joints16 = G[:, :, :3, 3]
        A = G.clone()
        A[:, :, :3, 3] = G[:, :, :3, 3] - (G[:, :, :3, :3] @ J[..., None])[..., 0]
        # 4. skinning
        Tv = torch.einsum("vk,bkij->bvij", self.weights, A)                                   # [B,V,4,4]
        verts = (Tv[..., :3, :3] @ v[..., None])[..., 0] + Tv[..., :3, 3]
        joints = torch.cat([joints16, verts[:, list(TIP_VERTICES)]], 1)[:, list(TO_DRAWING_ORDER)]
        if center_idx is not None:
            c = joints[:, center_idx:center_idx + 1]
            verts, joints = verts - c, joints - c
        if trans is not None:
            t = torch.as_tensor(trans, dtype=dtype).reshape(-1, 1, 3)
            verts, joints = verts + t, joints + t
        return verts, joints
