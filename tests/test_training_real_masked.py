"""Photos with real masks in training (``data.real_masked_roots``, ``meer.training.real_masked``): only labelled
training identities are used, the draw is reproducible and process-count independent, the teacher target is the
person's clean mean, the terms reach the recognition branch only, and a resumed run is bit-identical."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from meer.config import ConfigError, load_config
from meer.data.identity_folders import IdentityFolderDataset
from meer.models.teacher import build_teacher
from meer.training import loop, phases
from meer.training.checkpoint import load_state
from meer.training.config import TrainConfig
from meer.training.data import build_splits
from meer.training.real_masked import IdentityTargets, RealMaskedSet
from meer.utils.errors import MeerError
from test_training_loop import (_grads, _task_and_batch, assert_same_task_state, dataset,  # noqa: F401
                                make_identity_folders, tiny)
from test_training_teacher import CountingTeacher, teacher_file  # noqa: F401


@pytest.fixture(scope="module")
def real_root(tmp_path_factory) -> Path:
    """Masked photos of id00-id05 (the labelled set's names) and of a person the labelled set lacks."""
    root = make_identity_folders(tmp_path_factory.mktemp("real") / "real_masked", ids=7, per=2, seed=5)
    (root / "id06").rename(root / "stranger")
    return root


def test_only_labelled_training_identities_are_used(dataset, real_root, tmp_path):
    eval_list = tmp_path / "eval.txt"
    eval_list.write_text("id05\n")
    cfg = tiny(dataset, tmp_path, f"data.real_masked_roots=[{real_root}]", f"data.eval_identities=[{eval_list}]")
    splits = build_splits(cfg.data, cfg.seed, cfg.model.image_size)
    real = splits.real
    names = {splits.train.identities[int(lb)] for lb in real.labels.unique()}
    held_out = {"id05", *splits.val_names}
    assert names == {f"id{i:02d}" for i in range(6)} - held_out  # evaluation-only and validation people left out
    assert real.unmatched == ["stranger"] and len(real) == 2 * len(names)
    # each photo carries the label of the same person in the labelled set
    own = IdentityFolderDataset(real_root, image_size=cfg.model.image_size)
    for name in names:
        lb = splits.train.identities.index(name)
        mine = own.identities.index(name)
        expect = torch.stack([own[i]["clean"] for i, s in enumerate(own.samples) if s.label == mine])
        got = real.images[real.labels == lb].float() / 255.0
        torch.testing.assert_close(got, expect, atol=0.5 / 255, rtol=0)


def test_bad_real_masked_configs_are_one_line(dataset, real_root, tmp_path):
    with pytest.raises(ConfigError, match="need data.real_masked_roots"):
        tiny(dataset, tmp_path, "loss.w_real_id=1")
    with pytest.raises(ConfigError, match="needs a teacher"):
        tiny(dataset, tmp_path, f"data.real_masked_roots=[{real_root}]", "loss.w_real_distill=1")
    cfg = tiny(dataset, tmp_path, f"data.real_masked_roots=[{tmp_path / 'nowhere'}]")
    with pytest.raises(MeerError, match="data.real_masked_roots"):
        build_splits(cfg.data, cfg.seed, cfg.model.image_size)
    only_strangers = make_identity_folders(tmp_path / "strangers", ids=2, per=1, seed=9)
    for d in only_strangers.iterdir():
        d.rename(d.with_name(f"nobody_{d.name}"))
    cfg = tiny(dataset, tmp_path, f"data.real_masked_roots=[{only_strangers}]")
    with pytest.raises(MeerError, match="belongs to a labelled training identity"):
        build_splits(cfg.data, cfg.seed, cfg.model.image_size)


def test_a_name_in_two_labelled_roots_is_refused(dataset, real_root, tmp_path):
    twin = make_identity_folders(tmp_path / "twin", ids=6, per=2, seed=4)
    labeled = IdentityFolderDataset([dataset, twin], image_size=64)
    with pytest.raises(MeerError, match="matches 2 labelled identities"):
        RealMaskedSet(IdentityFolderDataset(real_root, image_size=64), labeled)


def test_draw_is_reproducible_and_independent_of_the_process_count(dataset, real_root):
    labeled = IdentityFolderDataset(dataset, image_size=64)
    real = RealMaskedSet(IdentityFolderDataset(real_root, image_size=64), labeled)
    one, lab1 = real.draw(6, torch.Generator().manual_seed(3), torch.device("cpu"))
    again, _ = real.draw(6, torch.Generator().manual_seed(3), torch.device("cpu"))
    assert torch.equal(one, again)
    halves = [real.draw(3, torch.Generator().manual_seed(3), torch.device("cpu"), rank=r, world_size=2)
              for r in (0, 1)]
    assert torch.equal(torch.cat([h[0] for h in halves]), one) and torch.equal(torch.cat([h[1] for h in halves]), lab1)
    # mirrored at random: some drawn photos are mirror images of a stored one
    stored = real.images.float() / 255.0
    mirrored = [any(torch.equal(x, s.flip(-1)) and not torch.equal(x, s) for s in stored) for x in one]
    assert any(mirrored) and one.shape == (6, 3, 64, 64)


def test_identity_target_is_the_clean_mean_computed_once(dataset, teacher_file):
    teacher = CountingTeacher(build_teacher(str(teacher_file)))
    labeled = IdentityFolderDataset(dataset, image_size=64)
    table = IdentityTargets(labeled, dim=teacher.inner.dim)
    got = table.lookup(teacher.embed, torch.tensor([2, 2, 4]))
    faces = torch.stack([labeled[i]["clean"] for i, s in enumerate(labeled.samples) if s.label == 2])
    expect = torch.nn.functional.normalize(teacher.inner.embed(torch.cat([faces, faces.flip(-1)])).mean(0), dim=0)
    torch.testing.assert_close(got[0], expect, atol=1e-6, rtol=1e-5)
    assert torch.equal(got[0], got[1]) and teacher.faces == 2 * 2 * 5  # two identities, 5 photos, both flips
    table.lookup(teacher.embed, torch.tensor([4]))
    assert teacher.faces == 20 and int(table.filled.sum()) == 2


def test_real_masked_terms_reach_the_recognition_branch_only(dataset, real_root, tmp_path, teacher_file):
    cfg, task, batch = _task_and_batch(dataset, tmp_path, f"data.real_masked_roots=[{real_root}]",
                                       f"loss.teacher={teacher_file}", "loss.w_real_distill=1", "loss.w_real_id=1")
    real = RealMaskedSet(IdentityFolderDataset(real_root, image_size=64), IdentityFolderDataset(dataset, image_size=64))
    batch.real, batch.real_labels = real.draw(3, torch.Generator().manual_seed(0), torch.device("cpu"))
    targets = IdentityTargets(IdentityFolderDataset(dataset, image_size=64), task.teacher.dim)
    t = targets.lookup(task.teacher.embed, batch.real_labels)
    batch.real_labels = batch.real_labels % 4  # the task was built for 4 identities
    parts = phases.real_masked_phase(task.model, batch, task.margin, t, cfg.loss, task.distill_proj)
    assert set(parts) == {"real_distill", "real_id"}
    parts["real_distill"].backward(retain_graph=True)
    model = task.model
    assert _grads(model.encoder.parameters()) > 0 and _grads(model.head.parameters()) > 0
    assert _grads(task.distill_proj.parameters()) > 0
    assert _grads(model.generator_parameters()) == 0 and _grads(task.margin.parameters()) == 0
    assert all(p.grad is None for p in task.teacher.parameters())
    parts["real_id"].backward()
    assert _grads(task.margin.parameters()) > 0 and _grads(model.generator_parameters()) == 0
    # no real photos in the batch: no terms
    batch.real = batch.real_labels = None
    assert phases.real_masked_phase(task.model, batch, task.margin, None, cfg.loss) == {}


def test_training_with_real_masks_resumes_bit_identically(dataset, real_root, tmp_path, teacher_file):
    base = [f"data.real_masked_roots=[{real_root}]", "data.real_masked_per_step=2", f"loss.teacher={teacher_file}",
            "loss.w_distill=1", "loss.w_real_distill=1", "loss.w_real_id=1", "total_steps=8", "data.val_identities=0"]
    full = loop.train(tiny(dataset, tmp_path / "a", *base))
    stats = [json.loads(x) for x in (full.run_dir / "stats.jsonl").read_text().splitlines()]
    assert all("train/loss/real_distill" in s and "train/loss/real_id" in s for s in stats if "train/loss/total" in s)
    assert "real masked: " in (full.run_dir / "log.txt").read_text()
    state = load_state(full.last_checkpoint)["task"]["real_targets"]
    assert state["filled"].any()
    part = loop.train(tiny(dataset, tmp_path / "b", *base, "stop_at_step=4"))
    cfg = load_config(TrainConfig, part.run_dir / "config.yaml", ["stop_at_step=null"])
    resumed = loop.train(cfg, resume=part.run_dir)
    assert_same_task_state(full.last_checkpoint, resumed.last_checkpoint)
