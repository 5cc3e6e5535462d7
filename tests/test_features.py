"""videochat.features: extraction (hit / miss / resume / refusal), the Dataset reading the cache, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from test_video_util import make_video

from videochat import data as vdata
from videochat.data import SampleDataset
from videochat.features import FeatureCache, FeatureCacheError
from videochat.features_extract import extract
from videochat.transforms import FrameTransform
from videochat.video import read_clip


@pytest.fixture(scope="module")
def model():
    from videochat.builders import videochat_tiny

    return videochat_tiny().eval()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    make_video(d / "a.mp4")
    make_video(d / "b.mp4", num_frames=20)
    (d / "broken.mp4").write_bytes(b"\x00" * 500)
    return d


def _sample(i, video, windows, refs=None):
    refs = list(range(len(windows))) if refs is None else refs
    return {
        "id": f"s{i}", "videos": [{"video_id": video, "path": video}],
        "clips": [{"video": 0, "start": s, "end": e} for s, e in windows],
        "messages": [
            {"role": "user", "content": [{"type": "clip", "clip": c} for c in refs] + [{"type": "text", "text": "Describe."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "a grey square brightens"}]},
        ],
    }


SAMPLES = [
    _sample(0, "a.mp4", [(0.0, 1.0), (1.0, 3.0)]),
    _sample(1, "a.mp4", [(0.0, 1.0), (2.0, 2.9)], refs=[1, 0]),  # (0, 1) is shared with s0: encoded once
    _sample(2, "b.mp4", [(0.5, 1.5), (0.0, 0.5)], refs=[0]),  # clip 1 unreferenced: never encoded
    _sample(3, "broken.mp4", [(0.0, 1.0)]),
]


def test_extract_encodes_each_distinct_clip_once_and_matches_the_model(model, root, tmp_path, monkeypatch):
    calls = []
    real = model.vision_features
    monkeypatch.setattr(model, "vision_features", lambda x: calls.append(len(x)) or real(x))
    counts = extract(model, SAMPLES, tmp_path / "cache", video_root=root, batch_size=2, progress=False)
    assert counts == {"clips": 5, "cached_before": 0, "extracted": 4, "rejected": 1, "malformed_samples": 0}
    assert sum(calls) == 4
    rejects = [json.loads(line) for line in (tmp_path / "cache" / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 1 and rejects[0]["video"] == "broken.mp4" and "broken.mp4" in rejects[0]["reason"]
    cache = FeatureCache(tmp_path / "cache")
    assert len(cache) == 4 and cache.sampling == "middle" and cache.feature_shape == (129, 64)
    feats, times = cache.get("a.mp4", 1.0, 3.0, 8)
    assert feats.dtype == torch.float16 and feats.shape == (129, 64)
    clip = read_clip(root / "a.mp4", 1.0, 3.0, 8, "middle")
    want = real(FrameTransform.from_config(model.config)(clip.frames)[None])[0]
    assert torch.allclose(feats.float(), want, atol=2e-3, rtol=1e-2)
    assert times == pytest.approx([t - 1.0 for t in clip.timestamps])
    assert cache.get("b.mp4", 0.0, 0.5) is None and cache.get("a.mp4", 1.0, 3.0001) is not None  # ms rounding
    # a second run finds everything cached (the broken clip is retried and rejected again)
    again = extract(model, SAMPLES, tmp_path / "cache", video_root=root, progress=False)
    assert again["cached_before"] == 4 and again["extracted"] == 0 and again["rejected"] == 1


def test_dataset_with_cache_never_decodes_and_matches_decoding(model, root, tmp_path, monkeypatch):
    extract(model, SAMPLES[:3], tmp_path / "cache", video_root=root, progress=False)
    cfg, tok = model.config, model.tokenizer
    decoded = SampleDataset(SAMPLES[:3], tok, cfg, video_root=root, sampling="middle")
    want = [decoded[i] for i in range(3)]

    def no_decoding(*a, **k):
        raise AssertionError("the Dataset decoded a cached clip")

    monkeypatch.setattr(vdata, "read_clip", no_decoding)
    cached = SampleDataset(SAMPLES[:3], tok, cfg, video_root=root, feature_cache=str(tmp_path / "cache"))  # a path works too
    for i in range(3):
        item = cached[i]
        assert "clip_frames" not in item and item["clip_features"].dtype == torch.float16
        assert item["clip_features"].shape == (want[i]["num_clips"], 129, 64)
        # same prompt (frame times included), same labels as the decoding path with `middle`
        assert torch.equal(item["input_ids"], want[i]["input_ids"]) and torch.equal(item["labels"], want[i]["labels"])
        feats = model.vision_features(want[i]["clip_frames"])
        assert torch.allclose(item["clip_features"].float(), feats, atol=2e-3, rtol=1e-2)
    assert cached.stats["bad"] == 0
    # a clip missing from the cache is a bad sample (reason names the cache), not a silent decode
    miss = SampleDataset([_sample(9, "b.mp4", [(0.0, 2.0)]), SAMPLES[0]], tok, cfg, feature_cache=FeatureCache(tmp_path / "cache"),
                         max_bad_fraction=0.5)
    item = miss[0]
    assert item["id"] == "s0" and "not in the feature cache" in item["skipped"][0]["reason"]
    assert miss.stats["reasons"] == {"CacheMiss": 1}


def test_extraction_resumes_after_an_interruption(model, root, tmp_path, monkeypatch):
    clean = tmp_path / "clean"
    extract(model, SAMPLES, clean, video_root=root, progress=False)
    real = model.vision_features
    calls = []

    def crash_on_third(x):
        calls.append(len(x))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(x)

    monkeypatch.setattr(model, "vision_features", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        extract(model, SAMPLES, tmp_path / "c", video_root=root, batch_size=1, shard_size=1, progress=False)
    assert len(FeatureCache(tmp_path / "c")) == 2  # two shards were complete
    (tmp_path / "c" / "index.jsonl").open("a").write('{"key": "torn')  # a crash mid-append leaves a torn line
    calls.clear()
    counts = extract(model, SAMPLES, tmp_path / "c", video_root=root, batch_size=1, shard_size=1, progress=False)
    assert counts["cached_before"] == 2 and counts["extracted"] == 2 and sum(calls) == 2
    a, b = FeatureCache(clean), FeatureCache(tmp_path / "c")
    assert len(b) == 4
    for s in SAMPLES[:3]:
        for c in s["clips"]:
            ha, hb = a.get(s["videos"][0]["path"], c["start"], c["end"]), b.get(s["videos"][0]["path"], c["start"], c["end"])
            assert (ha is None) == (hb is None)
            if ha is not None:
                assert torch.equal(ha[0], hb[0]) and ha[1] == hb[1]


def test_cache_from_another_model_is_refused(model, root, tmp_path):
    from videochat.builders import videochat_tiny

    extract(model, SAMPLES[:1], tmp_path / "c", video_root=root, progress=False)
    other = videochat_tiny(seed=1).eval()
    with pytest.raises(FeatureCacheError, match="fingerprint"):
        extract(other, SAMPLES[:1], tmp_path / "c", video_root=root, progress=False)
    with pytest.raises(FeatureCacheError, match="not a feature cache"):
        FeatureCache(tmp_path / "nothing")


def test_cli_extract(model, root, tmp_path, capsys):
    from data_tools.io import write_samples

    from videochat.cli import main

    model.save_pretrained(tmp_path / "model")
    write_samples(tmp_path / "ds" / "train" / "shard-00000.jsonl", SAMPLES[:3])
    argv = ["features", "extract", "--model", str(tmp_path / "model"), "--samples", str(tmp_path / "ds"),
            "--out", str(tmp_path / "cache"), "--videos", str(root), "--num-workers", "0", "--no-progress"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["extracted"] == 4 and out["rejected"] == 0
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["cached_before"] == 4
