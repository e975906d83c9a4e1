"""Labeling config for the review project: an `Image` and `BrushLabels` over a taxonomy.

The taxonomy is configurable; the default is a small moderation taxonomy plus the
neutral label `region` that every unlabelled proposal carries. Label Studio accepts
prediction labels that are not in the config, so `validate_labels` checks on our side.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from xml.sax.saxutils import quoteattr

NEUTRAL_LABEL = "region"

# label -> colour in the editor. Vivid, distinct colours; `region` is magenta, a
# colour that photographs rarely contain (the browser test looks for it).
DEFAULT_TAXONOMY: dict[str, str] = {
    NEUTRAL_LABEL: "#FF00FF",
    "nudity": "#FF3B30",
    "violence": "#FF9500",
    "weapon": "#FFCC00",
    "drugs": "#34C759",
    "hate-symbol": "#00C7BE",
    "personal-data": "#007AFF",
    "safe": "#8E8E93",
}


class LabelConfigError(ValueError):
    """A label we would send is not in the project's labeling config (or the config is unusable)."""


@dataclass(frozen=True)
class LabelingConfig:
    taxonomy: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TAXONOMY))
    neutral_label: str = NEUTRAL_LABEL
    from_name: str = "tag"
    to_name: str = "image"
    image_key: str = "image"  # task data key holding the image reference

    def __post_init__(self) -> None:
        if not self.taxonomy:
            raise LabelConfigError("taxonomy is empty")
        if self.neutral_label not in self.taxonomy:
            raise LabelConfigError(f"neutral label {self.neutral_label!r} is not in the taxonomy")

    @classmethod
    def from_labels(cls, labels: list[str], **kw) -> "LabelingConfig":
        """A taxonomy from plain label names (colours cycle through the defaults); adds the neutral label."""
        palette = list(DEFAULT_TAXONOMY.values())
        neutral = kw.get("neutral_label", NEUTRAL_LABEL)
        names = [neutral] + [n for n in labels if n != neutral]
        return cls(taxonomy={n: palette[i % len(palette)] for i, n in enumerate(names)}, **kw)

    @property
    def labels(self) -> list[str]:
        return list(self.taxonomy)

    def xml(self) -> str:
        lines = [
            "<View>",
            f"  <Image name={quoteattr(self.to_name)} value={quoteattr('$' + self.image_key)} zoom=\"true\"/>",
            f"  <BrushLabels name={quoteattr(self.from_name)} toName={quoteattr(self.to_name)}>",
        ]
        for label, colour in self.taxonomy.items():
            lines.append(f"    <Label value={quoteattr(label)} background={quoteattr(colour)}/>")
        lines += ["  </BrushLabels>", "</View>"]
        return "\n".join(lines)


def labels_in_config(xml: str, from_name: str) -> set[str]:
    """The label values of the `BrushLabels` control named `from_name` in a labeling config."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise LabelConfigError(f"labeling config is not valid XML: {e}") from None
    for el in root.iter():
        if el.tag.lower() == "brushlabels" and el.get("name") == from_name:
            return {lab.get("value") for lab in el.iter() if lab.tag.lower() == "label" and lab.get("value")}
    raise LabelConfigError(f"labeling config has no <BrushLabels name={from_name!r}>")


def validate_labels(labels, xml: str, from_name: str) -> None:
    """Raise LabelConfigError naming every label that the config does not define."""
    known = labels_in_config(xml, from_name)
    missing = sorted(set(labels) - known)
    if missing:
        raise LabelConfigError(
            f"labels {missing} are not in the labeling config of <BrushLabels name={from_name!r}> "
            f"(known: {sorted(known)})"
        )


def validate_prediction(prediction: dict, xml: str, from_name: str) -> None:
    labels = set()
    for r in prediction.get("result", []):
        if r.get("from_name") != from_name:
            raise LabelConfigError(f"result from_name {r.get('from_name')!r} is not {from_name!r}")
        labels.update(r.get("value", {}).get("brushlabels", []))
    validate_labels(labels, xml, from_name)
