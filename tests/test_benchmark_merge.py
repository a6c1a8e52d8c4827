"""`infer_latency.py --merge` joins runs made in separate calls; the latents they saved give fidelity even when
their decoded frames (hundreds of MB at real size) stayed on the device machine."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import ROOT

sys.path.insert(0, str(ROOT))  # benchmarks/ is a folder of scripts, not an installed package

from benchmarks.infer_latency import STOCK, merge  # noqa: E402

SETUP = {"model": "wan14b", "clip": [81, 480, 832], "steps": 40, "weights_checksum": 1.0, "device": "H100"}


def test_merge_takes_latents_brought_from_the_device_when_the_frames_did_not_come(tmp_path):
    """The runs' own `saved_to` is a device path; `latents` is where their `.pt` files were brought. Without
    frames a row gets the latent figure only, never a made-up PSNR; speed ratios and peer ratios still come."""
    stock = {**SETUP, "command": "stock", "saved_to": "/absent/lat",
             "rows": [{"variant": STOCK, "total_s": 270.0, "peak_gib": 47.0}]}
    ours = {**SETUP, "command": "ours", "saved_to": "/absent/lat",
            "rows": [{"variant": "lossless", "total_s": 240.0, "peak_gib": 45.0, "psnr_to_lossless_db": 100.0}]}
    peer = {**SETUP, "command": "peer", "saved_to": None,
            "rows": [{"variant": "peer diffsynth", "total_s": 300.0, "peak_gib": 50.0, "psnr_to_lossless_db": 26.0}]}
    folder = tmp_path / "lat"
    folder.mkdir()
    reference = torch.ones(1, 16, 2, 4, 4)
    torch.save(reference, folder / "stock.pt")
    torch.save(reference * 1.01, folder / "lossless.pt")
    paths = []
    for name, report in (("stock", stock), ("ours", ours), ("peer", peer)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(report))
    merge(paths, tmp_path / "merged.json", versus=paths[1], latents=folder)
    merged = json.loads((tmp_path / "merged.json").read_text())
    rows = {row["variant"]: row for row in merged["rows"]}
    assert abs(rows["lossless"]["latent_rel_l2_to_stock"] - 0.01) < 1e-6
    assert "psnr_to_stock_db" not in rows["lossless"]
    assert rows["lossless"]["speedup_vs_stock"] == 270.0 / 240.0
    assert rows["peer diffsynth"]["ours_speedup"] == {"lossless": 300.0 / 240.0}
    assert merged["commands"] == ["stock", "ours", "peer"]


def test_merge_refuses_runs_made_on_different_cards(tmp_path):
    """A side-by-side table means one kind of card: an H200 row beside an H100 row would pass a speed gap
    between cards off as one between methods."""
    paths = []
    for name, card in (("a", "H100"), ("b", "H200")):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps({**SETUP, "device": card, "command": name, "rows": []}))
    with pytest.raises(SystemExit) as info:
        merge(paths, tmp_path / "merged.json")
    assert str(info.value) == "--merge: device differs between the runs (H100 vs H200)"
    assert not (tmp_path / "merged.json").exists()


def test_merge_refuses_a_latents_folder_that_is_not_there(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({**SETUP, "command": "a", "rows": []}))
    with pytest.raises(SystemExit) as info:
        merge([tmp_path / "a.json"], tmp_path / "merged.json", latents=tmp_path / "absent")
    assert str(info.value) == (f"--latents {tmp_path / 'absent'}: expected the folder the runs' --save-latents "
                               "files were brought to")
    assert not (tmp_path / "merged.json").exists()
