"""Regions: known areas, point-in-polygon and GeoJSON (QuPath conventions) round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.cells import make_cell_table
from core.errors import InputError
from core.spatial.regions import (
    Region,
    cells_to_geojson,
    points_in_regions,
    polygon_area_um2,
    read_regions_geojson,
    regions_to_geojson,
)


def test_known_areas_and_containment():
    tri = Region("t", "tumour", [[0, 0], [300, 0], [0, 400]])
    assert tri.area_um2 == pytest.approx(60_000.0, abs=1e-9)
    ell = Region("L", "stroma", [[0, 0], [200, 0], [200, 100], [100, 100], [100, 300], [0, 300]])
    assert ell.area_um2 == pytest.approx(200 * 100 + 100 * 200, abs=1e-9)
    # Closed ring (repeated first vertex) and clockwise order give the same area.
    closed_cw = Region("c", "tumour", [[0, 0], [0, 1000], [1000, 1000], [1000, 0], [0, 0]])
    assert len(closed_cw.polygon_um) == 4 and closed_cw.area_mm2 == pytest.approx(1.0, abs=1e-12)
    holed = Region("h", "tumour", [[0, 0], [100, 0], [100, 100], [0, 100]], holes_um=([[40, 40], [60, 40], [60, 60], [40, 60]],))
    assert holed.area_um2 == pytest.approx(10_000 - 400, abs=1e-9)
    inside = holed.contains(np.array([[10.0, 10.0], [50.0, 50.0], [150.0, 50.0]]))
    assert inside.tolist() == [True, False, False]
    both = points_in_regions(np.array([[150.0, 50.0], [50.0, 250.0]]), [ell, holed])
    assert both.tolist() == [True, True]
    # Large offsets: shoelace is shifted to the first vertex, so no cancellation.
    far = Region("f", "tumour", np.array([[0, 0], [1, 0], [1, 1], [0, 1]]) * 10.0 + 1e7)
    assert far.area_um2 == pytest.approx(100.0, rel=1e-12)
    assert polygon_area_um2(np.array([[0, 0], [2, 0], [2, 2], [0, 2]])) == 4.0


def test_bad_regions_raise_input_error():
    with pytest.raises(InputError, match="kind"):
        Region("x", "necrosis", [[0, 0], [1, 0], [0, 1]])
    with pytest.raises(InputError, match="3 distinct"):
        Region("x", "tumour", [[0, 0], [1, 0], [0, 0]])
    with pytest.raises(InputError, match="non-finite"):
        Region("x", "tumour", [[0, 0], [1, np.nan], [0, 1]])


def _star(rng, n=7):
    """A simple (not self-crossing) polygon: random vertices sorted by angle around their centre."""
    p = rng.uniform(0, 1000, (n, 2))
    c = p.mean(axis=0)
    return p[np.argsort(np.arctan2(p[:, 1] - c[1], p[:, 0] - c[0]))]


def _regions():
    rng = np.random.default_rng(0)
    return [
        Region("Tumour 1", "tumour", _star(rng), id="a1"),
        Region("Stroma", "stroma", [[0.1, 0.2], [500.3, 0.7], [500.9, 400.123456789], [0.0, 399.99]], id="b2",
               holes_um=([[100.5, 100.25], [200.75, 100.125], [150.0, 300.3]],)),
        Region("Pen mark", "exclude", [[10, 10], [20, 10], [20, 20]]),
        Region("Front", "margin", [[0, 0], [900, 0], [900, 900], [0, 900]], id="m"),
    ]


@pytest.mark.parametrize("mpp", [0.2427, 0.5, 1.0])
def test_geojson_round_trip_is_exact(mpp):
    regions = _regions()
    gj = regions_to_geojson(regions, mpp)
    text = json.dumps(gj)  # through text, as a file would be
    back = read_regions_geojson(text, mpp)
    assert [(r.name, r.kind, r.id) for r in back] == [(r.name, r.kind, r.id) for r in regions]
    for a, b in zip(regions, back):
        np.testing.assert_allclose(b.polygon_um, a.polygon_um, rtol=1e-14, atol=1e-9)
        assert len(a.holes_um) == len(b.holes_um)
        for ha, hb in zip(a.holes_um, b.holes_um):
            np.testing.assert_allclose(hb, ha, rtol=1e-14, atol=1e-9)
        assert b.area_um2 == pytest.approx(a.area_um2, rel=1e-12)


def test_geojson_follows_qupath_conventions(tmp_path):
    mpp = 0.5
    regions = [Region("T", "tumour", [[0, 0], [100, 0], [100, 50]])]
    gj = regions_to_geojson(regions, mpp)
    f = gj["features"][0]
    assert gj["type"] == "FeatureCollection"
    assert f["properties"]["objectType"] == "annotation"
    assert f["properties"]["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    ring = f["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and ring[1] == [200.0, 0.0]  # pixels = µm / mpp, closed ring
    cells = make_cell_table(np.array([[10.0, 20.0], [30.0, 40.0]]), ["cd3-positive", "cd3-negative"], ["immune", "other"], np.array([0.9, 0.2]), mpp)
    cg = cells_to_geojson(cells, {"cd3-positive": "#a05a2c"}, mpp, regions=regions)
    dets = [g for g in cg["features"] if g["properties"]["objectType"] == "detection"]
    assert len(cg["features"]) == 3 and len(dets) == 2
    assert dets[0]["geometry"] == {"type": "Point", "coordinates": [10.0, 20.0]}
    assert dets[0]["properties"]["classification"] == {"name": "cd3-positive", "color": [160, 90, 44]}
    assert dets[1]["properties"]["classification"]["color"] == [128, 128, 128]
    json.dumps(cg, allow_nan=False)
    # Reading the combined file keeps the annotations and skips the detections.
    p = tmp_path / "all.geojson"
    p.write_text(json.dumps(cg))
    back = read_regions_geojson(p, mpp)
    assert len(back) == 1 and back[0].kind == "tumour"


def test_reads_qupath_feature_lists_and_multipolygons():
    qupath = [
        {"type": "Feature", "id": "q1", "geometry": {"type": "MultiPolygon", "coordinates": [
            [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]],
            [[[20, 20], [30, 20], [30, 30], [20, 20]]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "colorRGB": -3670016}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [5, 0], [5, 5], [0, 0]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Ignore*"}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [50, 0], [50, 50], [0, 0]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tissue"}}},
    ]
    with pytest.raises(InputError, match="Tissue"):
        read_regions_geojson(qupath, 2.0)
    regs = read_regions_geojson(qupath, 2.0, on_unknown="skip")
    assert [(r.kind, r.id) for r in regs] == [("tumour", "q1#0"), ("tumour", "q1#1"), ("exclude", None)]
    assert regs[0].area_um2 == pytest.approx(400.0)  # 10 px x 10 px at 2 µm/px


def test_bad_geojson_raises_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_regions_geojson(tmp_path / "missing.geojson", 0.5)
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid GeoJSON"):
        read_regions_geojson(bad, 0.5)
    with pytest.raises(InputError, match="FeatureCollection"):
        read_regions_geojson({"type": "Point", "coordinates": [1, 2]}, 0.5)
    with pytest.raises(InputError, match="no polygon annotations"):
        read_regions_geojson({"type": "FeatureCollection", "features": []}, 0.5)
    with pytest.raises(InputError, match="mpp"):
        read_regions_geojson({"type": "FeatureCollection", "features": []}, 0)
    with pytest.raises(InputError, match="ring"):
        read_regions_geojson({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[1, 2]]},
                              "properties": {"classification": {"name": "Stroma"}}}, 1.0)


def test_a_self_crossing_outline_is_repaired_into_its_loops():
    from core.spatial.regions import repair_region, repair_regions

    bowtie = Region("T", "tumour", [[0, 0], [100, 100], [100, 0], [0, 100]], id="q")
    assert bowtie.area_um2 == pytest.approx(0.0) and "Self-intersection" in bowtie.problem
    parts = repair_region(bowtie)
    assert [(p.name, p.id) for p in parts] == [("T (1)", "q~0"), ("T (2)", "q~1")]
    assert sum(p.area_um2 for p in parts) == pytest.approx(5000.0) and all(p.problem is None for p in parts)
    assert "repaired into 2 polygon(s)" in parts[0].note
    square = Region("S", "stroma", [[0, 0], [1, 0], [1, 1], [0, 1]])
    regions, notes = repair_regions([square, bowtie])
    assert regions[0] is square and len(regions) == 3 and len(notes) == 1
    spike = Region("L", "tumour", [[0, 0], [10, 0], [20, 0], [10, 0]])  # all on one line
    with pytest.raises(InputError, match="encloses no area"):
        repair_region(spike)
    # Read from GeoJSON: repaired, with the note on every part.
    gj = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]},
          "properties": {"classification": {"name": "Tumor"}}}
    back = read_regions_geojson(gj, 2.0)
    assert len(back) == 2 and all(r.note for r in back) and sum(r.area_mm2 for r in back) == pytest.approx(2e-4)


def test_limits_on_vertices_coordinates_and_nesting(monkeypatch):
    import core.spatial.regions as regions
    from core.spatial.regions import json_depth

    monkeypatch.setattr(regions, "MAX_REGION_VERTICES", 10)
    t = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    with pytest.raises(InputError, match="12 vertices, more than the 10 accepted"):
        Region("x", "tumour", np.c_[np.cos(t), np.sin(t)])
    far = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1e9, 0], [0, 1e9], [0, 0]]]},
           "properties": {"classification": {"name": "Tumor"}}}
    with pytest.raises(InputError, match="beyond the ±100000 µm"):
        read_regions_geojson(far, 0.5)
    assert json_depth('{"a": [[1, 2]], "b": "[[[[[[", "c": "\\"]]"}') == 3
    assert json_depth("[" * 500 + "]" * 500) == 500
    with pytest.raises(InputError, match="nests arrays or objects 100 deep"):
        read_regions_geojson("[" * 100 + "]" * 100, 1.0)


def test_containment_rasterising_and_distances_agree_with_brute_force():
    import pickle

    from core.spatial.geometry import _point_segment_distance, distance_to_segments_um, rasterise, rings_segments

    rng = np.random.default_rng(5)
    for _ in range(5):
        outer = _star(rng, 25)
        c = outer.mean(axis=0)
        hole = c + 40 * np.c_[np.cos(np.linspace(0, 6.2, 12)), np.sin(np.linspace(0, 6.2, 12))]
        region = Region("r", "tumour", outer, holes_um=(hole,))
        if region.problem:
            continue
        yy, xx = np.mgrid[0:100, 0:110]
        centres = np.c_[(xx.ravel() + 0.5) * 10, (yy.ravel() + 0.5) * 10]
        inside = region.contains(centres).reshape(100, 110)
        mask = rasterise([region.rings()], 0.0, 0.0, 10.0, (100, 110))
        assert (mask != inside).sum() <= 2  # pixel centres exactly on an edge may differ
        a, b = rings_segments(region.rings(), tolerance_um=0.0)
        pts = rng.uniform(-100, 1100, (300, 2))
        brute = np.array([_point_segment_distance(np.repeat(p[None], len(a), 0), a, b).min() for p in pts])
        np.testing.assert_allclose(distance_to_segments_um(pts, a, b), brute, atol=1e-9)
    # a long border goes through the R-tree: the same exact distances
    t = np.linspace(0, 2 * np.pi, 5000, endpoint=False)
    ring = np.c_[500 + 300 * np.cos(t) + 20 * np.sin(9 * t), 500 + 300 * np.sin(t)]
    a, b = rings_segments([ring], tolerance_um=0.0)
    pts = rng.uniform(0, 1000, (200, 2))
    brute = np.array([_point_segment_distance(np.repeat(p[None], len(a), 0), a, b).min() for p in pts])
    np.testing.assert_allclose(distance_to_segments_um(pts, a, b), brute, atol=1e-9)
    # simplified within 1 nm by default
    sa, sb = rings_segments([ring])
    assert len(sa) <= len(a)
    np.testing.assert_allclose(distance_to_segments_um(pts, sa, sb), brute, atol=1e-3)
    # a region keeps working after a round trip through pickle (its shapely geometry is rebuilt)
    region = Region("r", "tumour", ring)
    region.contains(pts)
    again = pickle.loads(pickle.dumps(region))
    np.testing.assert_array_equal(again.contains(pts), region.contains(pts))
