"""Settings of the detector (model, data, training) and the named presets.

A run is described by one :class:`Config`; it is written to ``config.json`` in the
output directory and stored in every checkpoint, so ``eval`` and ``predict``
rebuild exactly the model that was trained. The presets:

* ``full``: the default schedule, sized for one GPU (about 15 minutes on an H100-class card);
* ``demo``: a short schedule for a 2-core CPU (``make demo``, under 15 minutes);
* ``small``: 1-2 minutes on a CPU, enough to see a detector learn on a dozen images:
  the first run on one's own data;
* ``tiny``: a few seconds of training, for the tests (it learns nothing);
* ``ablate``: one run of the ablation grid of ``python -m experiments.ablate`` (the demo's
  model, a shorter schedule, one thread); ``ablate-smoke``: its CI version, a few steps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple


@dataclass
class ModelConfig:
    """The network, the assignment and inference settings."""

    depth: int = 18  # torchvision ResNet depth: 18, 34, 50, 101 or 152
    backbone_weights: Optional[str] = None  # local ResNet state_dict file; None: random init
    min_level: int = 3  # finest pyramid level P<min_level> (stride 2**min_level), 2..5
    max_level: int = 7  # coarsest level; above 5, extra stride-2 convs as in RetinaNet
    fpn_channels: int = 256
    head_convs: int = 4  # convs in each head tower (GroupNorm + ReLU after each)
    anchor_scales: Tuple[float, ...] = (8.0,)  # anchor side = scale * stride (ratio 1)
    anchor_ratios: Tuple[float, ...] = (1.0,)  # height / width
    topk: int = 9  # ATSS k; the assignment uses k * anchors per location
    # "atss"; "max_iou": the RetinaNet IoU >= 0.5 / < 0.4 rule; "fcos": FCOS's spatial and
    # scale constraint on the anchor centres (the last two for comparison, as in the paper)
    assigner: str = "atss"
    # fcos: FCOS's ranges (64, 128, 256, 512 px at P3-P7) times this; None: the data's
    # image_size / 800 (Config.resolved fills it in when training starts)
    fcos_range_scale: Optional[float] = None
    regression: str = "box"  # "box": deltas from the anchor box; "point": FCOS's distances from its centre
    # atss: margin of the centre-inside-GT test (contract step 6); None: no centre test
    center_eps: Optional[float] = 0.01
    # atss: each GT left without positives takes its best free candidate of IoU > 0 (contract step 8)
    ensure_positive: bool = False
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    box_loss_weight: float = 2.0
    score_threshold: float = 0.05  # on the classification probability
    pre_nms_topk: int = 1000  # candidates kept per level before NMS
    nms_threshold: float = 0.6
    max_detections: int = 100


@dataclass
class DataConfig:
    """Where images come from and how they are prepared."""

    data: str = "synthetic"  # "synthetic" or a COCO-format directory (see atss_detector.coco)
    train_split: str = "train"
    val_split: str = "val"
    image_size: int = 320  # COCO: shorter side after resizing; synthetic: longer side as generated
    max_size: Optional[int] = None  # COCO: cap on the longer side; None: image_size * 1333 / 800
    size_divisible: int = 32
    flip_prob: float = 0.5
    num_workers: int = 12
    synthetic_train_images: int = 32000
    synthetic_val_images: int = 500
    synthetic_seed: int = 0
    synthetic_min_object: float = 8.0  # px
    synthetic_mean_objects: float = 8.0
    synthetic_max_objects: int = 16
    synthetic_classes: int = 6  # the first N shape classes of atss_detector.synthetic.CLASSES
    synthetic_class_hues: bool = True  # each class its own hue band; False: shape alone tells classes apart
    # COCO: crowd boxes (iscrowd 1) become ignore regions (anchors under them take no loss);
    # False: they are dropped. Synthetic data has no crowd boxes.
    ignore_crowd: bool = False
    # images that cannot be decoded (missing, not an image, truncated) are left out, counted and
    # reported at the end; False: the first one stops the run with a line naming it
    skip_bad_images: bool = False


@dataclass
class TrainConfig:
    """Optimisation, schedule and bookkeeping."""

    batch_size: int = 32  # per process
    epochs: int = 12
    iterations: Optional[int] = None  # when set, overrides epochs (stops after this many steps)
    optimizer: str = "adamw"  # "sgd" (momentum 0.9, as the paper) or "adamw"
    lr: float = 2e-3  # for the global batch (batch_size * world size)
    weight_decay: float = 0.05
    momentum: float = 0.9
    schedule: str = "cosine"  # "cosine" or "step"
    steps: Tuple[float, ...] = (0.67, 0.89)  # step schedule: fractions of training, lr x0.1 at each
    warmup_iters: int = 300
    warmup_factor: float = 0.001
    grad_clip: Optional[float] = 10.0  # max gradient norm; None: no clipping
    amp: str = "auto"  # "auto" (bf16 on CUDA, off on CPU), "bf16" or "off"
    seed: int = 0
    output_dir: str = "runs/train"
    eval_every: int = 1  # evaluate on val every N epochs (0: only at the end)
    log_every: int = 10  # iterations between records in train_log.jsonl
    threads: Optional[int] = None  # CPU threads per process; None: available cores / processes
    device: str = "auto"  # "auto", "cpu", "cuda"


# (section, field) of settings added after configs were first saved; see Config.to_dict.
ADDED_FIELDS = (("model", "ensure_positive"), ("data", "ignore_crowd"), ("data", "skip_bad_images"))


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> Dict[str, Any]:
        """The settings as a dict of JSON types. Fields added after configs were first saved
        (:data:`ADDED_FIELDS`) are left out while they hold their default: a run that does not
        use them is described exactly as before (``from_dict`` fills them back in), so the
        ablation's fingerprints of earlier runs still match."""
        d = dataclasses.asdict(self)
        for section, name in ADDED_FIELDS:
            sub_cls = type(getattr(self, section))
            if d[section][name] == sub_cls.__dataclass_fields__[name].default:
                del d[section][name]
        return d

    def resolved(self) -> "Config":
        """A copy, every section copied too (the caller's config never changes through it),
        with the settings that default to something data-dependent filled in
        (``model.fcos_range_scale``: ``data.image_size / 800``)."""
        sections = {f.name: dataclasses.replace(getattr(self, f.name)) for f in dataclasses.fields(self)}
        if sections["model"].fcos_range_scale is None:
            sections["model"].fcos_range_scale = self.data.image_size / 800
        return dataclasses.replace(self, **sections)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Config":
        """Inverse of :meth:`to_dict`; unknown keys are an error, missing keys take defaults."""
        parts = {}
        for f in dataclasses.fields(cls):
            sub_cls = type(getattr(cls(), f.name))
            values = dict(d.get(f.name, {}))
            known = {sf.name: sf for sf in dataclasses.fields(sub_cls)}
            unknown = sorted(set(values) - set(known))
            if unknown:
                raise ValueError(f"config section {f.name!r} has unknown keys {unknown}")
            for k, v in values.items():
                if isinstance(v, list):  # JSON turns tuples into lists
                    values[k] = tuple(v)
            parts[f.name] = sub_cls(**values)
        return cls(**parts)


def _full() -> Config:
    # Sized for one H100-class GPU, about 15 minutes (not yet measured on a GPU): the
    # paper's model (P3-P7, 256 channels, one 8-stride anchor per location) on
    # 320 px synthetic images; 8 epochs of 32k images, batch 32 (8000 steps).
    # 12 data-loader workers draw the images (~30 ms each on one core: ~400/s,
    # against the ~285/s this schedule needs).
    cfg = Config()
    cfg.train = dataclasses.replace(cfg.train, epochs=8, warmup_iters=500, output_dir="runs/full")
    return cfg


def _demo() -> Config:
    # A 2-core CPU in about 9 minutes (measured: 0.85 s per step when the
    # machine is otherwise idle): 128 px images, P3-P4 only (ResNet layer4 is
    # then never run), 64 channels, anchors of 4 strides to fit objects of
    # 8-100 px, 600 steps of 16 images over 3 epochs of 3200 images.
    cfg = Config()
    cfg.model = dataclasses.replace(cfg.model, max_level=4, fpn_channels=64, anchor_scales=(4.0,))
    cfg.data = dataclasses.replace(
        cfg.data, image_size=128, num_workers=0, synthetic_train_images=3200, synthetic_val_images=200
    )
    cfg.train = dataclasses.replace(
        cfg.train, batch_size=16, epochs=3, warmup_iters=50, output_dir="runs/demo", log_every=5
    )
    return cfg


def _tiny() -> Config:
    # Seconds on a CPU: for tests and smoke runs.
    cfg = Config()
    cfg.model = dataclasses.replace(cfg.model, max_level=4, fpn_channels=32, head_convs=2, anchor_scales=(4.0,))
    cfg.data = dataclasses.replace(
        cfg.data,
        image_size=64,
        num_workers=0,
        synthetic_train_images=16,
        synthetic_val_images=8,
        synthetic_min_object=12.0,
        synthetic_mean_objects=3.0,
        synthetic_max_objects=4,
    )
    cfg.train = dataclasses.replace(
        cfg.train, batch_size=4, epochs=2, lr=1e-3, warmup_iters=2, output_dir="runs/tiny", log_every=1
    )
    return cfg


def _small() -> Config:
    # 1-2 minutes on a 2-core CPU, and it learns: the tiny model at 128 px, 150 steps of
    # batch 4 (on 12 images of one's own, 50 epochs of 3 steps), evaluated at the end only.
    # A new user's 12 images reached AP 49 with these settings (issue 26); 12 synthetic images
    # of 128 px (6 classes), scored on themselves, AP 78.4 in 2.0 min (2 cores shared with
    # other jobs, OMP_WAIT_POLICY=PASSIVE).
    cfg = _tiny()
    cfg.data = dataclasses.replace(cfg.data, image_size=128)
    cfg.train = dataclasses.replace(
        cfg.train, iterations=150, warmup_iters=10, eval_every=0, log_every=10, output_dir="runs/small"
    )
    return cfg


def _ablate() -> Config:
    # One run of the ablation grid (24 runs: 12 configurations x 2 seeds) on one
    # thread of the 2-core CPU, sized beforehand for a sweep of about 80 minutes while
    # other jobs share the machine (it took experiments/ablate_grid.RECORD_MINUTES, the number
    # to quote): the demo's model and data, 300 steps of 16 images
    # (1.5 epochs), evaluated once at the end. Measured per step, data included:
    # 0.39 s on an idle core, 0.6-0.77 s with other jobs' builds and tests running
    # (a run then takes 3-4.5 min, an idle one about 2.2 min; #A=9 costs ~5% more).
    cfg = _demo()
    cfg.train = dataclasses.replace(
        cfg.train, iterations=300, warmup_iters=50, eval_every=0, threads=1, output_dir="runs/ablate"
    )
    return cfg


def _ablate_smoke() -> Config:
    # Seconds: the --smoke of python -m experiments.ablate and of experiments.torchvision_table, for CI
    # (the tiny model, 2 steps, 8 val images).
    cfg = _tiny()
    cfg.train = dataclasses.replace(cfg.train, iterations=2, eval_every=0, threads=1, output_dir="runs/ablate-smoke")
    return cfg


PRESETS = {
    "full": _full,
    "demo": _demo,
    "small": _small,
    "tiny": _tiny,
    "ablate": _ablate,
    "ablate-smoke": _ablate_smoke,
}

# One line per preset, its size and time (`atss-detector --help` and `train --help`).
PRESET_SUMMARIES = {
    "full": "the default: ResNet-18, P3-P7, 256 channels, 320 px, 8,000 steps of 32 images; "
    "about 15 min on one GPU (an estimate), days on a CPU",
    "demo": "ResNet-18, P3-P4, 64 channels, 128 px, 600 steps of 16 images; 7-9.5 min on a 2-core CPU (make demo)",
    "small": "the tiny model at 128 px, 150 steps of 4 images; 1-2 min on a 2-core CPU, and a dozen images "
    "are enough to see it learn: the first run on your own data",
    "tiny": "ResNet-18, P3-P4, 32 channels, 64 px, 2 epochs of 16 images (8 steps); seconds; tests the set-up "
    "only (AP near 0)",
    "ablate": "one run of the ablate grid: the demo model, 300 steps on one thread; 2-4.5 min",
    "ablate-smoke": "one run of the ablation grid's --smoke (CI): the tiny model, 2 steps; seconds",
}


def preset(name: str) -> Config:
    """A fresh :class:`Config` for the preset ``name`` (one of :data:`PRESETS`)."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}: choose one of {sorted(PRESETS)}") from None
