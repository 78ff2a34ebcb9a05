"""The ATSS detector: ResNet + FPN backbone, a head shared across levels, training and inference.

The paper's anchor-based design (RetinaNet with #A=1 and ATSS assignment):
a torchvision ResNet, ``torchvision.ops.FeaturePyramidNetwork`` over
``P<min_level>..P<max_level>`` (levels above P5 from stride-2 convs), and one
head applied to every level: two towers of ``head_convs`` 3x3 convs with
GroupNorm, a classification branch (bias initialised for a prior of 0.01), a
box branch scaled by a learnable scalar per level, and a centerness branch on
the box tower.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d, batched_nms
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from .anchors import AnchorGenerator, anchor_strides, anchor_validity, build_coder
from .config import ModelConfig
from .loss import ATSSLoss, fcos_size_ranges

# Output channels of layer1..layer4 (C2..C5) of each torchvision ResNet.
RESNET_CHANNELS = {
    18: (64, 128, 256, 512),
    34: (64, 128, 256, 512),
    50: (256, 512, 1024, 2048),
    101: (256, 512, 1024, 2048),
    152: (256, 512, 1024, 2048),
}
MAX_LEVEL = 8

Detections = Dict[str, Tensor]  # "boxes" [N, 4] float32, "scores" [N] float32, "labels" [N] int64


class ExtraLevels(ExtraFPNBlock):
    """Pyramid levels above P5: stride-2 3x3 convs, the first on P5 and each next
    one on the ReLU of the previous (RetinaNet / ATSS)."""

    def __init__(self, channels: int, num_levels: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, stride=2, padding=1) for _ in range(num_levels))
        for conv in self.convs:
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

    def forward(self, results: List[Tensor], x: List[Tensor], names: List[str]) -> Tuple[List[Tensor], List[str]]:
        feature = results[-1]
        for i, conv in enumerate(self.convs):
            feature = conv(feature if i == 0 else F.relu(feature))
            results.append(feature)
            names.append(f"extra{i}")
        return results, names


class Backbone(nn.Module):
    """ResNet + FPN: ``forward(images)`` returns the maps of ``P<min_level>..P<max_level>``.

    Levels up to 5 come from ResNet stages (``P<l>`` from ``layer<l-1>``, stride
    ``2**l``); a ResNet stage above the top one needed is never run. With a local
    ``weights`` file (a torchvision ResNet ``state_dict``) BatchNorm is frozen and
    the stem and ``layer1`` are not trained, as torchvision's detection models do;
    from random init every layer trains with ordinary BatchNorm.
    """

    def __init__(
        self,
        depth: int = 18,
        min_level: int = 3,
        max_level: int = 7,
        channels: int = 256,
        weights: Optional[str] = None,
    ):
        super().__init__()
        if depth not in RESNET_CHANNELS:
            raise ValueError(f"depth must be one of {sorted(RESNET_CHANNELS)}, got {depth}")
        if not 2 <= min_level <= 5:
            raise ValueError(f"min_level must be in [2, 5], got {min_level}")
        if not min_level <= max_level <= MAX_LEVEL:
            raise ValueError(f"max_level must be in [min_level={min_level}, {MAX_LEVEL}], got {max_level}")
        norm = FrozenBatchNorm2d if weights else nn.BatchNorm2d
        resnet = getattr(torchvision.models, f"resnet{depth}")(weights=None, norm_layer=norm)
        if weights:
            _load_resnet_weights(resnet, weights)
            for module in (resnet.conv1, resnet.layer1):
                module.requires_grad_(False)
        top = min(max_level, 5)
        levels = range(min_level, top + 1)
        self.body = IntermediateLayerGetter(resnet, {f"layer{level - 1}": f"p{level}" for level in levels})
        in_channels = [RESNET_CHANNELS[depth][level - 2] for level in levels]
        extra = ExtraLevels(channels, max_level - 5) if max_level > 5 else None
        self.fpn = FeaturePyramidNetwork(in_channels, channels, extra_blocks=extra)
        self.strides = tuple(2**level for level in range(min_level, max_level + 1))

    def forward(self, images: Tensor) -> List[Tensor]:
        return list(self.fpn(self.body(images)).values())


def _load_resnet_weights(resnet: nn.Module, path: str) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    missing, unexpected = resnet.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    unexpected = [k for k in unexpected if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(
            f"{path} is not a state_dict of this ResNet: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def _group_norm(channels: int) -> nn.GroupNorm:
    # 32 groups as in the paper, at any width (measured: fewer, wider groups in a
    # 64-channel head learn classes several times more slowly).
    return nn.GroupNorm(math.gcd(32, channels), channels)


def _flatten(x: Tensor, values: int) -> Tensor:
    """``[B, #A * values, H, W]`` -> ``[B, H * W * #A, values]`` (the anchors' order)."""
    B, _, H, W = x.shape
    return x.view(B, -1, values, H, W).permute(0, 3, 4, 1, 2).reshape(B, -1, values)


class ATSSHead(nn.Module):
    """The head shared by all levels.

    ``forward(features)`` returns ``cls_logits [B, A, K]``, ``box_deltas [B, A, 4]``
    and ``centerness_logits [B, A]`` over the anchors of all levels, in anchor order.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        num_anchors: int,
        num_levels: int,
        num_convs: int = 4,
        prior: float = 0.01,
    ):
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"head_convs must be >= 1, got {num_convs}")
        self.num_classes = num_classes

        def tower():
            layers = []
            for _ in range(num_convs):
                layers += [nn.Conv2d(channels, channels, 3, padding=1), _group_norm(channels), nn.ReLU(inplace=True)]
            return nn.Sequential(*layers)

        self.cls_tower, self.box_tower = tower(), tower()
        self.cls_logits = nn.Conv2d(channels, num_anchors * num_classes, 3, padding=1)
        self.box_pred = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        self.centerness = nn.Conv2d(channels, num_anchors, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(num_levels))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior) / prior))

    def forward(self, features: Sequence[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        if len(features) != self.scales.numel():
            raise ValueError(f"expected {self.scales.numel()} feature maps, got {len(features)}")
        cls, box, ctr = [], [], []
        for level, feature in enumerate(features):
            cls_feature, box_feature = self.cls_tower(feature), self.box_tower(feature)
            cls.append(_flatten(self.cls_logits(cls_feature), self.num_classes))
            box.append(_flatten(self.box_pred(box_feature) * self.scales[level], 4))
            ctr.append(_flatten(self.centerness(box_feature), 1))
        return torch.cat(cls, 1), torch.cat(box, 1), torch.cat(ctr, 1).squeeze(-1)


class ATSSDetector(nn.Module):
    """ResNet-FPN ATSS detector.

    ``forward(images, image_sizes, gt_boxes, gt_labels)``: the loss dict
    (training); ``forward(images, image_sizes)``: detections per image in the
    coordinates of ``images`` (see :func:`rescale_detections` for the original
    images' coordinates).

    Args:
        cfg: the model settings.
        num_classes: K, foreground classes.
    """

    def __init__(self, cfg: ModelConfig, num_classes: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.cfg = cfg
        self.num_classes = num_classes
        self.backbone = Backbone(cfg.depth, cfg.min_level, cfg.max_level, cfg.fpn_channels, cfg.backbone_weights)
        self.anchor_generator = AnchorGenerator(self.backbone.strides, cfg.anchor_scales, cfg.anchor_ratios)
        num_anchors = self.anchor_generator.num_anchors_per_location
        self.head = ATSSHead(cfg.fpn_channels, num_classes, num_anchors, len(self.backbone.strides), cfg.head_convs)
        self.box_coder = build_coder(cfg.regression)
        fcos_ranges = None
        if cfg.assigner == "fcos":
            # Unresolved (a model built outside training): FCOS's own ranges, for 800-px images.
            scale = cfg.fcos_range_scale if cfg.fcos_range_scale is not None else 1.0
            fcos_ranges = fcos_size_ranges(self.backbone.strides, scale)
        self.criterion = ATSSLoss(
            num_classes,
            self.box_coder,
            topk=cfg.topk * num_anchors,
            center_eps=cfg.center_eps,
            ensure_positive=cfg.ensure_positive,
            focal_alpha=cfg.focal_alpha,
            focal_gamma=cfg.focal_gamma,
            box_loss_weight=cfg.box_loss_weight,
            assigner=cfg.assigner,
            fcos_ranges=fcos_ranges,
        )

    def forward(
        self,
        images: Tensor,
        image_sizes: Tensor,
        gt_boxes: Optional[List[Tensor]] = None,
        gt_labels: Optional[List[Tensor]] = None,
        ignore_boxes: Optional[List[Tensor]] = None,
    ):
        """
        Args:
            images: ``Tensor[B, 3, H, W]``, H and W multiples of the coarsest stride.
            image_sizes: ``Tensor[B, 2]`` (h, w) of each image inside the padding.
            gt_boxes, gt_labels: B x ``Tensor[G_i, 4]`` / ``Tensor[G_i]`` on the
                images' device; given for training.
            ignore_boxes: optional B x ``Tensor[M_i, 4]`` (training): regions whose
                anchors take no loss, e.g. COCO crowd boxes (see :class:`ATSSLoss`).
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be Tensor[B, 3, H, W], got {list(images.shape)}")
        features = self.backbone(images)
        cls_logits, box_deltas, centerness_logits = self.head(features)
        anchors, num_anchors_per_level = self.anchor_generator([f.shape[-2:] for f in features], images.device)
        valid = anchor_validity(anchors, image_sizes)
        strides = anchor_strides(num_anchors_per_level, self.backbone.strides, images.device)
        with torch.autocast(images.device.type, enabled=False):
            if gt_boxes is not None:
                if gt_labels is None or len(gt_boxes) != len(gt_labels) or len(gt_boxes) != images.shape[0]:
                    raise ValueError("gt_boxes and gt_labels must both be lists with one tensor per image")
                targets = self.criterion.targets(
                    anchors, num_anchors_per_level, valid, gt_boxes, gt_labels, ignore_boxes
                )
                return self.criterion(cls_logits, box_deltas, centerness_logits, anchors, targets, strides)
            return self.postprocess(
                cls_logits, box_deltas, centerness_logits, anchors, num_anchors_per_level, valid, image_sizes, strides
            )

    @torch.no_grad()
    def postprocess(
        self,
        cls_logits: Tensor,
        box_deltas: Tensor,
        centerness_logits: Tensor,
        anchors: Tensor,
        num_anchors_per_level: Sequence[int],
        valid: Tensor,
        image_sizes: Tensor,
        strides: Optional[Tensor] = None,
    ) -> List[Detections]:
        """Detections per image: per-level top-k of the classification scores above
        ``score_threshold``, decoded and clipped, then class-wise NMS and ``max_detections``.

        The score of a detection is ``sqrt(p_cls * p_centerness)``. ``strides``
        (``Tensor[A]``, each anchor's level stride) is needed by the point coding.
        """
        cfg, K = self.cfg, self.num_classes
        probs = cls_logits.float().sigmoid() * valid[..., None]
        centerness = centerness_logits.float().sigmoid()
        results = []
        for b in range(probs.shape[0]):
            boxes, scores, labels = [], [], []
            start = 0
            for count in num_anchors_per_level:
                level_probs = probs[b, start : start + count].flatten()
                candidates = torch.nonzero(level_probs > cfg.score_threshold).squeeze(1)
                level_scores = level_probs[candidates]
                if candidates.numel() > cfg.pre_nms_topk:
                    level_scores, top = level_scores.topk(cfg.pre_nms_topk)
                    candidates = candidates[top]
                anchor_index = candidates // K + start
                level_strides = strides[anchor_index] if strides is not None else None
                boxes.append(
                    self.box_coder.decode(box_deltas[b, anchor_index].float(), anchors[anchor_index], level_strides)
                )
                scores.append(torch.sqrt(level_scores * centerness[b, anchor_index]))
                labels.append(candidates % K)
                start += count
            h, w = image_sizes[b].tolist()
            boxes_b = torch.cat(boxes)
            boxes_b = torch.stack(
                [
                    boxes_b[:, 0].clamp(0, w),
                    boxes_b[:, 1].clamp(0, h),
                    boxes_b[:, 2].clamp(0, w),
                    boxes_b[:, 3].clamp(0, h),
                ],
                dim=1,
            )
            scores_b, labels_b = torch.cat(scores), torch.cat(labels)
            keep = batched_nms(boxes_b, scores_b, labels_b, cfg.nms_threshold)[: cfg.max_detections]
            results.append({"boxes": boxes_b[keep], "scores": scores_b[keep], "labels": labels_b[keep]})
        return results


def rescale_detections(detections: List[Detections], scales: Tensor, original_sizes: Tensor) -> List[Detections]:
    """Maps boxes from the resized images back to the original ones.

    ``scales`` ``[B, 2]`` (sx, sy) and ``original_sizes`` ``[B, 2]`` (h, w) as in
    :class:`~atss_detector.data.Batch`; boxes are clipped to the original image.
    """
    out = []
    for det, (sx, sy), (h, w) in zip(detections, scales.tolist(), original_sizes.tolist()):
        boxes = det["boxes"] / det["boxes"].new_tensor([sx, sy, sx, sy])
        limit = boxes.new_tensor([w, h, w, h])
        out.append({**det, "boxes": torch.minimum(boxes.clamp(min=0), limit)})
    return out


def build_model(cfg: ModelConfig, num_classes: int) -> ATSSDetector:
    """An :class:`ATSSDetector` for ``num_classes`` classes with the settings of ``cfg``."""
    return ATSSDetector(cfg, num_classes)
