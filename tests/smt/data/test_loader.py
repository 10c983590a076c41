"""Torch side: items, padding collate for mixed sizes, teacher noise, augmentation, workers."""
from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from smt.data.augment import Augment, AugmentConfig
from smt.data.loader import ScoreDataset, collate
from smt.tokenizer import Vocab, tokenize


@pytest.fixture(scope="module")
def prepared(prepared_dir):
    dd = datasets.load_from_disk(str(prepared_dir))
    return dd, Vocab.load(prepared_dir / "vocab.json")


def test_item_contract(prepared) -> None:
    dd, vocab = prepared
    ds = ScoreDataset(dd["train"], vocab, "bekern")
    item = ds[0]
    img = item["image"]
    assert img.dtype == torch.float32 and img.ndim == 3 and img.shape[0] == 1
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    assert float(img.mean()) > 0.8                     # white paper is 1.0
    ids = item["ids"]
    assert ids.dtype == torch.long and ids[0] == vocab.bos_id and ids[-1] == vocab.eos_id
    assert vocab.decode(ids.tolist()) == tokenize(item["transcription"], "bekern")


def test_collate_pads_mixed_sizes(prepared) -> None:
    dd, vocab = prepared
    ds = ScoreDataset(dd["train"], vocab)
    items = [ds[i] for i in range(4)]
    sizes = {tuple(it["image"].shape[-2:]) for it in items}
    lengths = {len(it["ids"]) for it in items}
    assert len(sizes) > 1 and len(lengths) > 1, "the fixture should mix sizes and lengths"
    b = collate(items, pad_id=vocab.pad_id)
    hmax = max(s[0] for s in sizes)
    wmax = max(s[1] for s in sizes)
    assert b["images"].shape == (4, 1, hmax, wmax)
    for i, it in enumerate(items):
        h, w = it["image"].shape[-2:]
        assert b["image_sizes"][i].tolist() == [h, w]
        assert torch.equal(b["images"][i, :, :h, :w], it["image"])
        assert torch.all(b["images"][i, :, h:, :] == 1.0) and torch.all(b["images"][i, :, :, w:] == 1.0)
        n = len(it["ids"]) - 1
        assert torch.equal(b["input_ids"][i, :n], it["ids"][:-1])
        assert torch.equal(b["target_ids"][i, :n], it["ids"][1:])
        assert torch.all(b["target_ids"][i, n:] == vocab.pad_id)
    assert b["input_ids"].shape == b["target_ids"].shape == (4, max(lengths) - 1)
    assert b["transcriptions"] == [it["transcription"] for it in items]


def test_teacher_noise_touches_inputs_only(prepared) -> None:
    dd, vocab = prepared
    clean = collate([ScoreDataset(dd["train"], vocab)[i] for i in range(4)])
    noisy = collate([ScoreDataset(dd["train"], vocab, teacher_noise=0.5)[i] for i in range(4)])
    assert torch.equal(clean["target_ids"], noisy["target_ids"])
    changed = (clean["input_ids"] != noisy["input_ids"]).float().mean().item()
    assert 0.15 < changed < 0.6
    assert torch.all(noisy["input_ids"][:, 0] == vocab.bos_id)


def test_dataloader_with_workers(prepared) -> None:
    dd, vocab = prepared
    ds = ScoreDataset(dd["train"], vocab, augment=Augment("default", seed=1), teacher_noise=0.1)
    loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate, shuffle=True)
    seen = 0
    for batch in loader:
        assert batch["images"].shape[0] == batch["input_ids"].shape[0]
        seen += batch["images"].shape[0]
    assert seen == len(ds)


@pytest.mark.parametrize("name", ["perspective_p", "elastic_p", "morph_p", "brightness_contrast_p"])
def test_each_augmentation_runs_and_keeps_the_page(name: str) -> None:
    img = np.full((60, 200), 255, np.uint8)
    img[20:40, 30:170:10] = 0                                  # some "ink"
    cfg = AugmentConfig(**{f: 0.0 for f in ("perspective_p", "elastic_p", "morph_p",
                                            "brightness_contrast_p")} | {name: 1.0})
    out = Augment(cfg, seed=0)(img)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert not np.array_equal(out, img)
    assert out.mean() > 150 and (out < 128).any()


def test_augment_config_validates() -> None:
    with pytest.raises(ValueError, match="elastic_p"):
        AugmentConfig(elastic_p=1.5)
