import pytest
import torch

from interplay.models.conditions import id_map as I
from interplay.models.sandbox.presets import generate_scene


def squares(h=8, w=8):
    """id1: rows 0-3 x cols 0-3 (16 px); id2: rows 2-7 x cols 2-7 (36 px); they overlap on rows/cols 2-3."""
    m = torch.zeros(2, h, w, dtype=torch.bool)
    m[0, 0:4, 0:4] = True
    m[1, 2:8, 2:8] = True
    return m


def test_default_palette_colours_exact():
    m = squares()
    img = I.id_map_image(m)
    assert img.shape == (1, 8, 8, 3) and img.dtype == torch.float32
    assert img[0, 0, 0].tolist() == [1.0, 0.0, 0.0]  # id1 red
    assert img[0, 7, 7].tolist() == [0.0, 1.0, 0.0]  # id2 green
    assert img[0, 0, 7].tolist() == [0.0, 0.0, 0.0]  # background black
    five = torch.zeros(5, 1, 5, dtype=torch.bool)
    for k in range(5):
        five[k, 0, k] = True
    row = (I.id_map_image(five)[0, 0] * 255).round().long().tolist()
    assert row == [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255]]


def test_overlap_rules():
    m = squares()
    hi = I.index_map(m, "higher_id")
    assert hi[2, 2] == 2 and hi[0, 0] == 1 and hi[5, 5] == 2 and hi[7, 0] == 0
    small = I.index_map(m, "smaller_on_top")  # id1 (16 px) is smaller than id2 (36 px): id1 on top
    assert small[2, 2] == 1 and small[3, 3] == 1 and small[5, 5] == 2
    assert int((small == 1).sum()) == 16 and int((hi == 1).sum()) == 12
    swapped = I.index_map(m.flip(0), "smaller_on_top")  # now the small one is id2
    assert swapped[2, 2] == 2
    eq = torch.zeros(2, 4, 4, dtype=torch.bool)
    eq[0, :2, :2] = eq[1, 1:3, 1:3] = True  # equal areas: the higher id wins
    assert I.index_map(eq, "smaller_on_top")[1, 1] == 2
    # per frame: with [K,F,H,W] the area is counted in each frame
    mf = torch.stack([m, m.flip(0)], dim=1)
    per = I.index_map(mf, "smaller_on_top")
    assert per.shape == (2, 8, 8) and per[0, 2, 2] == 1 and per[1, 2, 2] == 2
    with pytest.raises(ValueError, match="overlap"):
        I.index_map(m, "lowest")


def test_encode_decode_round_trip_and_noise_tolerance():
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(4, 1, 16, 16, dtype=torch.bool)
    masks[0, 0, :8, :8] = masks[1, 0, :8, 8:] = masks[2, 0, 8:, :8] = masks[3, 0, 12:, 12:] = True
    idm = I.build_id_map(masks)
    back, unmatched = I.decode_palette(idm.image)
    assert torch.equal(back, idm.index) and not unmatched.any()
    assert torch.equal(I.masks_from_index(back, 4), masks[:, 0])
    u8 = (idm.image[0] * 255).round().to(torch.uint8)
    noisy = (u8.float() + torch.randint(-30, 31, u8.shape, generator=g)).clamp(0, 255) / 255.0
    back_noisy, un = I.decode_palette(noisy)
    assert torch.equal(back_noisy, idm.index) and not un.any()  # |noise| <= 30*sqrt(3) = 52 < 64
    grey = noisy.clone()
    grey[0, 0] = torch.tensor([200, 40, 40]) / 255.0  # sqrt(55^2 + 40^2 + 40^2) = 78.9 from red, farther from the rest
    idx, un = I.decode_palette(grey)
    assert un.sum() == 1 and un[0, 0] and idx[0, 0] == 0
    assert I.decode_palette(grey, max_distance=79.0)[0][0, 0] == 1
    assert I.decode_palette(grey, max_distance=78.8)[0][0, 0] == 0
    decoded, n_unmatched = I.id_map_from_image(u8)
    assert n_unmatched == 0 and decoded.num_slots == 5 and decoded.ids == [1, 2, 3, 4]
    assert torch.equal(decoded.masks[:4, 0], masks[:, 0]) and not decoded.masks[4].any()


def test_custom_palette_and_errors():
    pal = "[[10,10,10],[200,100,0],[0,100,200]]"
    img = I.id_map_image(squares(), palette=pal)
    assert (img[0, 0, 0] * 255).round().tolist() == [200, 100, 0]
    assert (img[0, 0, 7] * 255).round().tolist() == [10, 10, 10]
    with pytest.raises(ValueError, match="3 instances but the palette has colours for 2"):
        I.id_map_image(torch.zeros(3, 4, 4), palette=pal)
    with pytest.raises(ValueError, match="at most 5 IDs"):
        I.id_map_image(torch.zeros(6, 4, 4))
    with pytest.raises(ValueError, match="distinct"):
        I.parse_palette([[0, 0, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="JSON"):
        I.parse_palette("[[0,0,0]")


def test_empty_map_is_black_and_resize_adds_no_colours():
    idm = I.build_id_map(torch.zeros(2, 3, 8, 8))
    assert idm.is_empty and idm.ids == [] and float(idm.image.abs().sum()) == 0.0
    big = I.id_map_image(squares(), size=(27, 19))  # odd factors: nearest never blends
    colours = {tuple(c) for c in (big[0] * 255).round().long().reshape(-1, 3).tolist()}
    assert colours == {(0, 0, 0), (255, 0, 0), (0, 255, 0)}


def test_latent_time_or_mapping():
    m = torch.zeros(1, 49, 2, 2, dtype=torch.bool)
    assert I.latent_time_or(m).shape == (1, 13, 2, 2)
    for pix, lat in ((0, 0), (1, 1), (4, 1), (5, 2), (48, 12)):
        m = torch.zeros(49, 2, 2, dtype=torch.bool)
        m[pix, 0, 1] = True
        out = I.latent_time_or(m)
        assert out[:, 0, 1].nonzero().flatten().tolist() == [lat], (pix, lat)
    assert I.latent_time_or(torch.zeros(81, 1, 1)).shape[0] == 21
    assert I.latent_time_or(torch.ones(5, 1, 1), temporal=2).shape[0] == 3
    with pytest.raises(ValueError, match="1 \\+ 4\\*n"):
        I.latent_time_or(torch.zeros(48, 2, 2))


def test_latent_space_nearest_samples_top_left_of_each_token():
    m = torch.zeros(480, 720)
    assert I.latent_space_nearest(m).shape == (30, 45)
    m[16, 32] = 1  # the pixel NEAREST samples for token (1, 2)
    m[100, 100] = 1  # inside token (6, 6) but not its sample point
    out = I.latent_space_nearest(m)
    assert out.nonzero().tolist() == [[1, 2]]
    assert I.latent_space_nearest(torch.ones(64, 96), I.LATENT_FACTORS["wan2.2-5b"].spatial).shape == (2, 3)
    with pytest.raises(ValueError, match="multiples of 16"):
        I.latent_space_nearest(torch.zeros(40, 40))


def test_latent_mask_track_combines_space_then_time():
    m = torch.zeros(2, 9, 32, 32, dtype=torch.bool)
    m[0, 3, 16:, 16:] = True  # pixel frame 3 -> latent frame 1
    m[1, 0, :16, :16] = True
    idm = I.build_id_map(m)
    tr = idm.latent_tracks(4, 16)
    assert tr.shape == (2, 3, 2, 2)
    assert tr[0].nonzero().tolist() == [[1, 1, 1]] and tr[1].nonzero().tolist() == [[0, 0, 0]]
    assert idm.first_frame_latent(16)[1].nonzero().tolist() == [[0, 0]]


def test_scene_masks_from_sandbox_multi():
    clip = generate_scene("multi", 0, (32, 32), frames=5)
    masks, labels = I.masks_from_scene(clip)
    n = len(clip.objects)
    assert masks.shape == (n, 5, 32, 32) and len(labels) == n
    assert labels[0] == f"{clip.objects[0]['colour']} {clip.objects[0]['shape']}"
    assert torch.equal(masks[1], torch.from_numpy(clip.id_map == 2))
    picked, lab = I.masks_from_scene(clip, "2,1")
    assert torch.equal(picked[0], masks[1]) and lab == (labels[1], labels[0])
    six = generate_scene("multi", 3, (32, 32), frames=5)  # 6 objects: driven 0,1, collisions 1-2, 0-2, 0-1
    assert len(six.objects) == 6 and I.scene_objects(six) == [0, 1, 2]
    with pytest.raises(ValueError, match="at most 5"):
        I.scene_objects(six, "1,2,3,4,5,6")
    with pytest.raises(ValueError, match="not in the scene"):
        I.scene_objects(clip, "9")
