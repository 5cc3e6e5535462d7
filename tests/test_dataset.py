"""videochat.data: items, decoding once, bad-sample skipping and counting, collator, length-grouped sampler."""

from __future__ import annotations

import json

import pytest
import torch
from test_video_util import make_video
from torch.utils.data import DataLoader

from videochat import data as vdata
from videochat.builders import tiny_config
from videochat.collate import Collator, LengthGroupedSampler
from videochat.data import SampleDataset, StreamingSampleDataset, TooManyBadSamples
from videochat.tokenizers import bpe_tokenizer

T = 8


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer()


@pytest.fixture(scope="module")
def cfg():
    return tiny_config()  # 32 px frames, 16 tokens per clip, videochat2 template


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    make_video(d / "a.mp4")  # 3.0 s
    make_video(d / "b.mp4", num_frames=20)  # 2.0 s
    (d / "bad.mp4").write_bytes(b"not a video at all" * 100)
    return d


def sample(i, video="a.mp4", clips=((0.0, 1.0),), refs=None, answer="a red circle moves"):
    refs = list(range(len(clips))) if refs is None else refs
    user = [{"type": "clip", "clip": c} for c in refs] + [{"type": "text", "text": "What happens?"}]
    return {
        "id": f"s{i}", "format": "a", "videos": [{"video_id": video, "path": video}],
        "clips": [{"video": 0, "start": s, "end": e} for s, e in clips],
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": [{"type": "text", "text": answer}]}],
    }


def test_item_fields_frames_labels_and_relative_times(tok, cfg, root, monkeypatch):
    calls = []
    real = vdata.read_clip

    def counting(*a, **k):
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(vdata, "read_clip", counting)
    # clip 0 referenced twice, clip 1 once, clip 2 never (its video was "dropped")
    s = sample(0, clips=((0.0, 1.0), (1.0, 2.6), (2.0, 3.0)), refs=[0, 1, 0])
    ds = SampleDataset([s], tok, cfg, video_root=root, sampling="middle")
    item = ds[0]
    assert len(calls) == 2  # each referenced clip decoded once
    assert item["num_clips"] == 3 and item["clip_frames"].shape == (3, T, 3, 32, 32)
    assert torch.equal(item["clip_frames"][0], item["clip_frames"][2])
    assert not torch.equal(item["clip_frames"][0], item["clip_frames"][1])
    ids, labels = item["input_ids"], item["labels"]
    ph = tok.convert_tokens_to_ids(cfg.placeholder_token)
    assert int((ids == ph).sum()) == 3 * cfg.tokens_per_clip and bool((labels[ids == ph] == -100).all())
    answer = tok.decode(ids[labels != -100])
    assert "a red circle moves" in answer and "What happens" not in answer
    # frame times relative to each clip's start: clip 1 is [1.0, 2.6] -> 0.1, 0.3, 0.5, ...
    text = tok.decode(ids[ids != ph])
    assert "0.0, 0.1, 0.3, 0.4, 0.6, 0.8, 0.9" in text or "sampled at 0.0" in text
    assert "sampled at 0.1, 0.3, 0.5, 0.7, 0.9, 1.1, 1.3, 1.5" in text
    assert item["id"] == "s0" and item["skipped"] == [] and ds.stats == {"seen": 1, "good": 1, "bad": 0, "reasons": {}}


def test_rand_sampling_is_reproducible_per_epoch(tok, cfg, root):
    ds = SampleDataset([sample(0, clips=((0.0, 3.0),))], tok, cfg, video_root=root, sampling="rand", seed=1)
    a, b = ds[0]["clip_frames"], ds[0]["clip_frames"]
    assert torch.equal(a, b)
    ds.set_epoch(1)
    assert not torch.equal(a, ds[0]["clip_frames"])
    ds2 = SampleDataset([sample(0, clips=((0.0, 3.0),))], tok, cfg, video_root=root, sampling="rand", seed=1)
    assert torch.equal(a, ds2[0]["clip_frames"])  # a fresh process (resume) draws the same frames


def _mixed(n_good=8):
    good = [sample(i, video="a.mp4" if i % 2 else "b.mp4") for i in range(n_good)]
    bad = [
        sample(100, video="missing.mp4"),
        sample(101, video="bad.mp4"),
        sample(102, clips=((5.0, 6.0),)),  # window past the end of a 3 s video
        {"id": "s103", "messages": []},  # malformed: no clips/videos, empty messages
        sample(104, refs=[3]),  # references a clip that does not exist
    ]
    return good[:2] + bad[:3] + good[2:5] + bad[3:] + good[5:]


def test_map_style_skips_counts_and_substitutes_deterministically(tok, cfg, root, tmp_path):
    samples = _mixed()
    log = tmp_path / "bad.jsonl"
    ds = SampleDataset(samples, tok, cfg, video_root=root, sampling="middle", max_bad_fraction=0.5, bad_sample_log=str(log))
    items = [ds[i] for i in range(len(ds))]
    # a bad index returns the next good sample; the bad ones it passed are listed
    assert [it["id"] for it in items[2:6]] == ["s2", "s2", "s2", "s2"]
    assert [[s["id"] for s in it["skipped"]] for it in items[2:5]] == [["s100"], ["s101"], ["s102"]]
    reasons = {s["id"]: s["reason"] for it in items for s in it["skipped"]}
    assert "no such file" in reasons["s100"] and "bad.mp4" in reasons["s101"] and "past the end" in reasons["s102"]
    assert "s103" in reasons and "clip 3" in reasons["s104"]
    st = ds.stats  # each bad sample counted once: where its own index was asked for
    assert st == {"seen": 13, "good": 8, "bad": 5, "reasons": st["reasons"]} and sum(st["reasons"].values()) == 5
    assert [it["id"] for it in items] == [ds[i]["id"] for i in range(len(ds))]  # deterministic
    assert st["reasons"]["VideoNotFoundError"] >= 1 and st["reasons"]["ClipWindowError"] >= 1
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert {r["id"] for r in logged} == {"s100", "s101", "s102", "s103", "s104"}


def test_map_style_from_shards_with_a_broken_line(tok, cfg, root, tmp_path):
    from data_tools.io import write_samples

    shard = tmp_path / "ds" / "train" / "shard-00000.jsonl"
    write_samples(shard, [sample(0), sample(1)])
    with open(shard, "a") as f:
        f.write('{"id": "torn", "messages": [\n[1, 2]\n')
    write_samples(tmp_path / "ds" / "val" / "shard-00000.jsonl.zst", [sample(7)], compression="zst")
    ds = SampleDataset(str(tmp_path / "ds"), tok, cfg, video_root=root, split="train", max_bad_fraction=0.9)
    assert len(ds) == 4 and len(ds.lengths()) == 4
    ids = [ds[i]["id"] for i in range(4)]
    assert ids == ["s0", "s1", "s0", "s0"] and ds.stats["reasons"] == {"InvalidJSON": 2}
    assert [ds[0]["id"]] == ["s0"] and len(SampleDataset(str(tmp_path / "ds"), tok, cfg, split="val")) == 1


def test_too_many_bad_samples_stops_with_a_clear_message(tok, cfg, root):
    samples = [sample(i, video="missing.mp4") for i in range(6)] + [sample(9)]
    ds = SampleDataset(samples, tok, cfg, video_root=root, max_bad_fraction=0.2, bad_check_after=5)
    with pytest.raises(TooManyBadSamples, match=r"5 of 5 samples were bad .*VideoNotFoundError"):
        for i in range(len(ds)):
            ds[i]


def test_streaming_shards_over_workers_and_skips_bad(tok, cfg, root, tmp_path):
    from data_tools.io import write_samples

    samples = _mixed(10)
    write_samples(tmp_path / "ds" / "train" / "shard-00000.jsonl", samples[:8])
    write_samples(tmp_path / "ds" / "train" / "shard-00001.jsonl.zst", samples[8:], compression="zst")
    with open(tmp_path / "ds" / "train" / "shard-00000.jsonl", "a") as f:
        f.write("{not json\n")
    kw = dict(video_root=root, sampling="middle", max_bad_fraction=0.6, split="train")
    ds = StreamingSampleDataset(str(tmp_path / "ds"), tok, cfg, **kw)
    single = [it["id"] for it in ds]
    assert sorted(single) == sorted(f"s{i}" for i in range(10))
    assert ds.stats["bad"] == 6 and ds.stats["reasons"]["InvalidJSON"] == 1
    loader = DataLoader(StreamingSampleDataset(str(tmp_path / "ds"), tok, cfg, **kw), batch_size=2, num_workers=2,
                        collate_fn=Collator(tok.pad_token_id))
    seen = [i for b in loader for i in b["ids"]]
    assert sorted(seen) == sorted(single)  # each sample exactly once across workers
    # two ranks split the stream without overlap; `skip` resumes a rank's stream
    r0 = [it["id"] for it in StreamingSampleDataset(str(tmp_path / "ds"), tok, cfg, rank=0, world_size=2, **kw)]
    r1 = [it["id"] for it in StreamingSampleDataset(str(tmp_path / "ds"), tok, cfg, rank=1, world_size=2, **kw)]
    assert sorted(r0 + r1) == sorted(single) and not set(r0) & set(r1)
    resumed = [it["id"] for it in StreamingSampleDataset(str(tmp_path / "ds"), tok, cfg, rank=0, world_size=2, skip=3, **kw)]
    assert resumed == r0[-len(resumed):] and len(resumed) < len(r0)


def test_collator_pads_and_concatenates_clips(tok, cfg, root):
    ds = SampleDataset([sample(0, clips=((0.0, 1.0), (1.0, 2.0))), sample(1, answer="no")], tok, cfg,
                       video_root=root, sampling="middle")
    items = [ds[0], ds[1]]
    batch = Collator(tok.pad_token_id, pad_to_multiple_of=8)([items[0], None, items[1]])
    b, length = batch["input_ids"].shape
    assert b == 2 and length % 8 == 0 and length >= max(len(it["input_ids"]) for it in items)
    assert batch["clip_frames"].shape == (3, T, 3, 32, 32) and batch["num_clips"].tolist() == [2, 1]
    n1 = len(items[1]["input_ids"])
    assert batch["attention_mask"][1].tolist() == [1] * n1 + [0] * (length - n1)
    assert (batch["labels"][1, n1:] == -100).all() and (batch["input_ids"][1, n1:] == tok.pad_token_id).all()
    assert torch.equal(batch["clip_frames"][2], items[1]["clip_frames"][0])
    left = Collator(tok.pad_token_id, padding_side="left")(items)
    assert left["attention_mask"][1, -n1:].all() and left["input_ids"][1, -1] == items[1]["input_ids"][-1]
    assert Collator(0)([None]) is None


def test_length_grouped_sampler_groups_is_seeded_and_resumes():
    lengths = [int(x) for x in torch.randint(10, 500, (103,), generator=torch.Generator().manual_seed(0))]
    s = LengthGroupedSampler(lengths, batch_size=4, seed=3, mega_batch_mult=4)
    idx = list(s)
    assert len(idx) == len(s) == 104 and set(idx) == set(range(103))  # padded by wrapping
    assert idx == list(LengthGroupedSampler(lengths, batch_size=4, seed=3, mega_batch_mult=4))
    assert max(lengths[i] for i in idx[:4]) == max(lengths)  # longest batch first
    spread = sum(max(lengths[i] for i in idx[k:k + 4]) - min(lengths[i] for i in idx[k:k + 4]) for k in range(0, 104, 4))
    rand_spread = sum(max(lengths[k:k + 4]) - min(lengths[k:k + 4]) for k in range(0, 100, 4))
    assert spread < rand_spread / 2
    s.set_epoch(1)
    assert list(s) != idx
    s.set_epoch(1, start=40)
    state = s.state_dict()
    s2 = LengthGroupedSampler(lengths, batch_size=4, seed=3, mega_batch_mult=4)
    s2.load_state_dict(state)
    full = LengthGroupedSampler(lengths, batch_size=4, seed=3, mega_batch_mult=4)
    full.set_epoch(1)
    assert list(s2) == list(full)[40:] and len(s2) == 64
    ranks = [list(LengthGroupedSampler(lengths, 4, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 52 and set(ranks[0]) | set(ranks[1]) == set(range(103))
    with pytest.raises(ValueError):
        s2.load_state_dict({"epoch": 0, "start": 0, "seed": 9})


def test_dataloader_with_workers_and_length_sampler(tok, cfg, root):
    samples = [sample(i, clips=((0.0, 1.0 + (i % 3)),), answer="x " * (i * 3 + 1)) for i in range(8)]
    ds = SampleDataset(samples, tok, cfg, video_root=root, sampling="rand", seed=0)
    sampler = LengthGroupedSampler(ds.lengths(), batch_size=2, seed=0)
    loader = DataLoader(ds, batch_size=2, sampler=sampler, num_workers=2, collate_fn=Collator(tok.pad_token_id))
    batches = list(loader)
    assert len(batches) == 4 and sorted(i for b in batches for i in b["ids"]) == sorted(s["id"] for s in samples)
    # the same frames as in-process decoding (per-sample seeds do not depend on the worker)
    first = batches[0]
    direct = ds[sampler.indices()[0]]
    assert torch.equal(first["clip_frames"][0], direct["clip_frames"][0])


def test_sample_with_nothing_to_learn_is_skipped_as_no_targets(tok, cfg, root, tmp_path):
    """No assistant turn (or every label -100) would give a 0/0 = NaN loss: skipped, counted, logged."""
    no_answer = {**sample(1), "id": "u1", "messages": [sample(1)["messages"][0]]}  # user turn only
    text_only = {"id": "u2", "videos": [], "clips": [], "messages": [{"role": "user", "content": "hello?"}]}
    log = tmp_path / "bad.jsonl"
    ds = SampleDataset([sample(0), no_answer, text_only, sample(3)], tok, cfg, video_root=root, sampling="middle",
                       max_bad_fraction=0.9, bad_sample_log=str(log))
    items = [ds[i] for i in range(len(ds))]
    assert [it["id"] for it in items] == ["s0", "s3", "s3", "s3"]
    assert [s["id"] for s in items[1]["skipped"]] == ["u1"] and "no_targets" in items[1]["skipped"][0]["reason"]
    assert ds.stats == {"seen": 4, "good": 2, "bad": 2, "reasons": {"no_targets": 2}}
    assert all(int((it["labels"][1:] != -100).sum()) > 0 for it in items)  # every item has a loss target
    assert {json.loads(line)["id"] for line in log.read_text().splitlines()} == {"u1", "u2"}
    # streaming: the same verdict, simply moved past
    stream = StreamingSampleDataset([no_answer, sample(4)], tok, cfg, video_root=root, sampling="middle",
                                    max_bad_fraction=0.9)
    assert [it["id"] for it in stream] == ["s4"] and stream.stats["reasons"] == {"no_targets": 1}


def test_transient_oserror_is_retried_but_a_decode_error_is_cached(tok, cfg, root, monkeypatch):
    real, calls = vdata.read_clip, []
    hiccup = {"left": 1}

    def flaky(path, *a, **k):
        calls.append(str(path))
        if str(path).endswith("a.mp4") and hiccup["left"]:
            hiccup["left"] -= 1
            raise OSError(5, "Input/output error")  # e.g. an NFS timeout: the file is fine
        return real(path, *a, **k)

    monkeypatch.setattr(vdata, "read_clip", flaky)
    ds = SampleDataset([sample(0), sample(1, video="bad.mp4"), sample(2, video="b.mp4")], tok, cfg, video_root=root,
                       sampling="middle", max_bad_fraction=0.9)
    first = ds[0]
    assert first["id"] == "s2" and first["skipped"][0]["reason"].startswith("OSError")
    assert ds[0]["id"] == "s0"  # retried (not cached as bad) and good this time
    ds[1], ds[1]
    assert calls.count(str(root / "bad.mp4")) == 1  # a real decode failure is decided once per process
    assert ds.stats["reasons"] == {"OSError": 1, "VideoDecodeError": 2}
